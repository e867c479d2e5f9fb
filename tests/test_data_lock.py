"""Data is a dependency: each run stage depends on its experiment's data lock (the manifest lines of the data-root
files its runs read), so changed data makes the runs that read it stale and the same data elsewhere does not."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from fedpeft.core import registry
from fedpeft.core.integrity import DataFileError, read_manifest
from fedpeft.experiments import pipelines
from fedpeft.experiments.data_lock import data_lock

ROOT = Path(__file__).resolve().parents[1]


def _root(tmp_path: Path, files: dict[str, bytes], name: str = "data") -> Path:
    root = tmp_path / name
    lines = []
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
        lines.append(f"{hashlib.sha256(content).hexdigest()}  ./{rel}")
    (root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")
    return root


FILES = {"glue/SST-2/train.tsv": b"a", "glue/SST-2/dev.tsv": b"b", "glue/MRPC/train.tsv": b"c", "eurosat/EuroSAT_RGB.zip": b"d"}


def test_a_folder_stands_for_every_file_under_it_and_a_file_for_itself(tmp_path):
    root = _root(tmp_path, FILES)
    lock = data_lock(root, ["glue/SST-2/", "eurosat/EuroSAT_RGB.zip"])
    assert list(lock) == ["eurosat/EuroSAT_RGB.zip", "glue/SST-2/dev.tsv", "glue/SST-2/train.tsv"]
    assert lock["glue/SST-2/dev.tsv"] == hashlib.sha256(b"b").hexdigest()


def test_changed_data_changes_the_lock_and_a_copy_elsewhere_does_not(tmp_path):
    first = data_lock(_root(tmp_path, FILES, "one"), ["glue/SST-2/"])
    assert data_lock(_root(tmp_path, FILES, "copy"), ["glue/SST-2/"]) == first  # FEDPEFT_DATA_ROOT at an identical copy
    changed = data_lock(_root(tmp_path, FILES | {"glue/SST-2/dev.tsv": b"B"}, "changed"), ["glue/SST-2/"])
    assert changed != first and changed["glue/SST-2/train.tsv"] == first["glue/SST-2/train.tsv"]
    assert data_lock(_root(tmp_path, FILES | {"glue/MRPC/train.tsv": b"C"}, "other"), ["glue/SST-2/"]) == first


def test_a_file_the_manifest_does_not_list_is_named(tmp_path):
    with pytest.raises(DataFileError, match=r"glue/STS-B/ is read by the runs but the manifest of .* lists no such folder"):
        data_lock(_root(tmp_path, FILES), ["glue/STS-B/"])


def test_declared_files_are_the_loaders_own():
    from fedpeft.data.eurosat import EUROSAT_ZIP
    from fedpeft.data.glue import SPLIT_FILES, TSV_FILES

    eurosat = registry.get("eurosat_fedavg_ptq")
    assert eurosat.data_files(eurosat.load("local")) == [EUROSAT_ZIP]
    glue = registry.get("glue_lora_aggregation")
    s = glue.load("local")
    assert glue.data_files(s) == [f"{TSV_FILES[t][0]}/{SPLIT_FILES[split]}" for t in [s["main_task"], *s["extra_tasks"]]
                                  for split in ("train", "validation")]


@pytest.mark.parametrize("profile", ["embedded", "local", "paper"])
def test_every_run_stage_depends_on_its_experiments_data_lock(profile):
    stages = yaml.safe_load(pipelines.render_pipeline(profile))["stages"]
    for declared in registry.experiments():
        lock = f"results/${{profile}}/data_lock/{declared.name}.json"
        reads = bool(declared.data_files(declared.load(profile)))
        assert (f"data_lock_{declared.name}" in stages) == reads
        for name, stage in stages.items():
            if name.startswith(f"{declared.name}_"):
                assert (lock in stage["do"]["deps"]) == reads, f"{profile}: {name}"
        if reads:
            assert stages[f"data_lock_{declared.name}"]["always_changed"] is True


def test_the_local_profile_reads_only_files_the_manifest_lists():
    data_root = registry.get("eurosat_fedavg_ptq").load("local").data_root
    if not (data_root / "MANIFEST.sha256").is_file():
        pytest.skip(f"no data root at {data_root}")
    manifest = read_manifest(data_root)
    for declared in registry.experiments():
        lock = data_lock(data_root, declared.data_files(declared.load("local")))
        assert all(manifest[p] == h for p, h in lock.items())
