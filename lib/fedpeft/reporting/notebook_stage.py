"""Run one experiment's notebook as a DVC stage without ever losing the committed outputs.

``python -m fedpeft.reporting.notebook_stage --profile P --experiment E --notebook notebooks/N.ipynb``

papermill executes the notebook with ``FEDPEFT_REPORTS_DIR`` pointing at a staging folder of this process beside the
profile's reports (``reports/<profile>/.staging-<experiment>-<random>``). Only when the notebook finishes are its
outputs swapped in:
the experiment's folder, ``metrics/<experiment>.json`` and ``plots/<experiment>_history.csv``. A notebook that
fails, or a stage that is killed, leaves the committed outputs as they were and removes the staging folder (the
stages declare their outputs ``persist: true``, so DVC does not delete them first either). The notebook runs with
``FEDPEFT_RECORDS_ONLY=1``: it reads the run stages' records and never trains.

One report stage of an experiment runs at a time per reports folder: a stage holds an exclusive lock on
``reports/<profile>/.lock-<experiment>`` (``flock``, released by the kernel when the process ends, however it ends);
a second one (``make regenerate`` while ``make repro`` runs) stops at once with exit code 75, naming the process that
holds the lock, and touches nothing.

papermill and its kernel die with this process: it asks the kernel to send it SIGTERM when its parent (DVC) dies,
and on SIGTERM or SIGINT it ends papermill's whole process tree before it exits. The kernel's sockets are encrypted
with CurveZMQ keys that the kernel manager makes (:func:`execute`).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from fedpeft.core.config import COMMON_SCHEMA, PROFILES, REPO_ROOT, load_raw, validate_section
from fedpeft.core.supervise import die_with_parent as _die_with_parent
from fedpeft.core.supervise import end_process_tree

#: Set for the notebook: the run stages have already written every record it reads (same name as
#: ``fedpeft.experiments.runs.RECORDS_ONLY_ENV``, which this layer may not import).
RECORDS_ONLY_ENV = "FEDPEFT_RECORDS_ONLY"
RESULTS_ENV = "FEDPEFT_RESULTS_DIR"  # fedpeft.core.records.RESULTS_ENV


BUSY_EXIT = 75  # EX_TEMPFAIL: try again later


class StageBusy(RuntimeError):
    """Another report stage of the same experiment holds the reports folder."""


def hold_stage_lock(reports_root: Path, experiment: str) -> int:
    """Take the exclusive lock of ``experiment``'s report stage on ``reports_root`` and return its file descriptor (kept
    open for the life of the process: the kernel releases the lock when the process ends). Raises :class:`StageBusy`
    naming the holder's process id when another stage has it."""
    reports_root.mkdir(parents=True, exist_ok=True)
    path = reports_root / f".lock-{experiment}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StageBusy(f"{experiment}: another report stage of this experiment is running on {reports_root} (process "
                            f"{holder}); this one stops and leaves the committed outputs alone. Wait for that one to end "
                            "(or stop it), then run this again.") from err
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def record_output_path(executed: Path, final: Path) -> None:
    """Set papermill's ``output_path`` in the executed notebook to where it is committed, relative to the repository
    (papermill wrote the staging folder's absolute path: the checkout's location and a name that no longer exists)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    meta = nb.metadata.get("papermill")
    if meta is None:
        return
    final = Path(final).resolve()
    meta["output_path"] = final.relative_to(REPO_ROOT).as_posix() if final.is_relative_to(REPO_ROOT) else final.name
    nbformat.write(nb, executed)


def swap_in(staging: Path, reports_root: Path, experiment: str) -> None:
    """Move the staged experiment folder, metrics and history over the current ones (each by rename)."""
    final = reports_root / experiment
    old = reports_root / f".old-{experiment}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging / experiment, final)
    shutil.rmtree(old, ignore_errors=True)
    for rel in (f"metrics/{experiment}.json", f"plots/{experiment}_history.csv"):
        if (staging / rel).is_file():
            (reports_root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, reports_root / rel)


def execute(notebook: Path, output: Path, profile: str) -> None:
    """papermill's execution of ``notebook`` into ``output`` with the stage's parameters (``profile``, no progress
    bars inside the notebook), in a kernel whose sockets are encrypted with CurveZMQ keys the kernel manager makes.
    Plain TCP (jupyter_client's default) made ipykernel 7 warn "Kernel is running over TCP without encryption" at
    every report stage; the kernel listens on localhost either way."""
    import papermill
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _required(self) -> str:
            return "required"

    papermill.execute_notebook(str(notebook), str(output), kernel_name="python3", parameters={"profile": profile, "progress": False},
                               progress_bar=True, kernel_manager_class=EncryptedKernelManager)


def run_stage(notebook: Path, profile: str, experiment: str, reports_root: Path, results_dir: Path | None = None) -> int:
    """Execute ``notebook`` into staging and swap its outputs in on success; return papermill's exit code.
    ``results_dir``: run every planned run afresh into this results root (the notebook computes the records it
    does not find there) instead of reading the run stages' records."""
    import tempfile

    lock = hold_stage_lock(reports_root, experiment)  # raises StageBusy before anything is touched
    for left in reports_root.glob(f".staging-{experiment}-*"):  # a killed stage's (none is live: this one holds the lock)
        shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=reports_root, prefix=f".staging-{experiment}-"))
    (staging / experiment).mkdir(parents=True)
    command = [sys.executable, "-m", "fedpeft.reporting.notebook_stage", "--execute", str(notebook),
               str(staging / experiment / Path(notebook).name), "--profile", profile]
    env = os.environ | {"FEDPEFT_REPORTS_DIR": str(staging), RECORDS_ONLY_ENV: "1"}
    if results_dir is not None:
        env = {k: v for k, v in env.items() if k != RECORDS_ONLY_ENV} | {RESULTS_ENV: str(results_dir)}
    child = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)

    def stop(signum, _frame):
        end_process_tree(child.pid)
        shutil.rmtree(staging, ignore_errors=True)
        sys.stderr.write(f"{experiment}: stopped by signal {signum}; the committed outputs in {reports_root} are unchanged\n")
        sys.exit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)
        sys.stderr.write(f"{experiment}: the notebook failed (exit {code}); the committed outputs in {reports_root} are "
                         "unchanged\n")
        return code
    executed = staging / experiment / Path(notebook).name
    if executed.is_file():
        record_output_path(executed, reports_root / experiment / Path(notebook).name)
    swap_in(staging, reports_root, experiment)
    shutil.rmtree(staging, ignore_errors=True)
    os.close(lock)
    return 0


def report_stages(pipeline: Path) -> list[tuple[str, Path]]:
    """``(experiment, notebook)`` of every report stage of a dvc.yaml, in its order."""
    import re

    import yaml

    stages = yaml.safe_load(Path(pipeline).read_text())["stages"]
    found = [re.search(r"--experiment (\S+) --notebook (\S+)", " ".join(str(st.get("cmd", "")).split())) for st in stages.values()]
    return [(m.group(1), Path(m.group(2))) for m in found if m]


def regenerate(profile: str, reports_root: Path, results_root: Path) -> int:
    """Every experiment of the profile afresh, one process per experiment: each notebook runs all its planned runs
    into a scratch results root, then its records and reports are swapped in. The same outputs as ``dvc repro -f``
    without a process start per run (the embedded profile's runs take seconds each); ``make regenerate`` then
    records them in dvc.lock with ``dvc commit``."""
    import tempfile

    pipeline = REPO_ROOT / ("dvc.yaml" if profile == "embedded" else f"pipelines/{profile}/dvc.yaml")
    done: list[str] = []

    def say_what_is_left(why: str) -> None:
        if done:
            sys.stderr.write(f"make regenerate stopped ({why}) after {', '.join(done)}: their records and reports are the "
                             f"new ones, but dvc.lock does not record them yet (`dvc status` shows them changed). Run "
                             f"`make regenerate PROFILE={profile}` again, or `dvc commit -f` to record what is there.\n")

    with tempfile.TemporaryDirectory(dir=results_root.parent, prefix=".regenerate-") as scratch:
        for experiment, notebook in report_stages(pipeline):
            try:
                code = run_stage(REPO_ROOT / notebook, profile, experiment, reports_root, results_dir=Path(scratch))
            except (SystemExit, StageBusy) as stopped:  # a signal ended the stage (its handler said so), or another held it
                say_what_is_left(f"stopped during {experiment}")
                raise stopped
            if code:
                say_what_is_left(f"{experiment} failed")
                return code
            fresh, final = Path(scratch) / profile / experiment, results_root / experiment
            old = results_root / f".old-{experiment}"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fresh, final)
            shutil.rmtree(old, ignore_errors=True)
            done.append(experiment)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--experiment", help="the experiment of this report stage")
    parser.add_argument("--notebook", type=Path)
    parser.add_argument("--all", action="store_true", help="regenerate every experiment's runs and report (see regenerate)")
    parser.add_argument("--reports-root", type=Path, help="default: the profile's reports_dir")
    parser.add_argument("--execute", nargs=2, type=Path, metavar=("NOTEBOOK", "OUTPUT"),
                        help="the stage's child: execute NOTEBOOK into OUTPUT (see execute)")
    args = parser.parse_args(argv)
    _die_with_parent()
    if args.execute:
        execute(*args.execute, args.profile)
        return
    root = args.reports_root
    if root is None:
        common = validate_section("common", load_raw(args.profile).get("common", {}), COMMON_SCHEMA)
        root = REPO_ROOT / common["reports_dir"]
    if args.all:
        try:
            sys.exit(regenerate(args.profile, root, REPO_ROOT / "results" / args.profile))
        except StageBusy as busy:
            sys.stderr.write(f"{busy}\n")
            sys.exit(BUSY_EXIT)
    if args.experiment is None or args.notebook is None:
        parser.error("--experiment and --notebook are required (or --all)")
    try:
        sys.exit(run_stage(args.notebook, args.profile, args.experiment, root))
    except StageBusy as busy:
        sys.stderr.write(f"{busy}\n")
        sys.exit(BUSY_EXIT)


if __name__ == "__main__":
    main()
