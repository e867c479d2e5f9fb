"""The data lock: which data-root files an experiment's runs read, and their sha256 from the data root's manifest.

``python -m fedpeft.experiments.data_lock --profile P --experiment E`` writes ``results/<P>/data_lock/<E>.json``: the
manifest lines of every file the experiment declares (``data_files`` in its settings; a folder stands for every file
under it), sorted. It is a DVC stage of its own, run at every ``dvc repro`` (``always_changed``: it takes well under
a second), and every run stage of the experiment depends on its file. So a changed data file (with its manifest line),
or a data root pointed at another copy whose files differ, changes the lock and makes each run that reads them
stale, while the same data under another path changes nothing. ``dvc status`` lists the lock stages as "always
changed": the data is checked again at the next ``dvc repro``, never assumed up to date. A file the manifest does not
list, or that differs from its line, stops the run itself (:func:`fedpeft.core.integrity.require_data_file`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedpeft.core import registry
from fedpeft.core.config import PROFILES, REPO_ROOT
from fedpeft.core.files import atomic_write_text
from fedpeft.core.integrity import DataFileError, read_manifest


def lock_path(profile: str, experiment: str, results_root: Path | None = None) -> Path:
    return (results_root or REPO_ROOT / "results") / profile / "data_lock" / f"{experiment}.json"


def data_lock(data_root: Path, files: list[str]) -> dict[str, str]:
    """``{manifest path: sha256}`` of ``files`` (a trailing ``/``: every manifest entry under that folder). A file or
    folder the manifest does not list is an error naming it."""
    manifest = read_manifest(Path(data_root))
    locked: dict[str, str] = {}
    for wanted in files:
        found = {p: h for p, h in manifest.items() if (p.startswith(wanted) if wanted.endswith("/") else p == wanted)}
        if not found:
            raise DataFileError(f"{wanted} is read by the runs but the manifest of {data_root} lists no such "
                                f"{'folder' if wanted.endswith('/') else 'file'}; restore the data root (see its README)")
        locked |= found
    return dict(sorted(locked.items()))


def write_lock(profile: str, experiment: str, results_root: Path | None = None) -> Path:
    declared = registry.get(experiment)
    settings = declared.load(profile)
    files = declared.data_files(settings)
    body = {"experiment": experiment, "profile": profile, "files": data_lock(settings.data_root, files) if files else {}}
    path = lock_path(profile, experiment, results_root)
    text = json.dumps(body, indent=1) + "\n"
    if not path.is_file() or path.read_text() != text:  # unchanged: the file keeps its time stamp
        atomic_write_text(path, text)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--experiment", required=True, choices=registry.names())
    args = parser.parse_args(argv)
    path = write_lock(args.profile, args.experiment)
    print(f"{args.experiment}: data lock {path.relative_to(REPO_ROOT)} ({len(json.loads(path.read_text())['files'])} files)")


if __name__ == "__main__":
    main()
