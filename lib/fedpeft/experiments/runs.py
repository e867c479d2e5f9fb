"""An experiment's runs: one DVC stage each, one result record each, collected by the notebook.

Every experiment (:mod:`fedpeft.core.registry`) has a package ``fedpeft.experiments.<name>`` with

- ``experiment.py``: its declaration for the registry (title, seed report, notebook, main score);
- ``settings.py``: ``EXPERIMENT``, ``SCHEMA``, ``load``, and two sets of parameter keys that runs must never read:
  ``PLAN_KEYS`` (which runs exist: seeds, partitions) and ``REPORT_KEYS`` (prices, claim thresholds); optionally
  ``KIND_KEYS``, the keys only one kind of run reads (a run spec's ``kind``; each kind is its own DVC stage);
- ``runs.py``: ``run_specs(settings) -> list[RunSpec]`` and ``execute(settings, spec, progress) -> RunRecord``;
  it imports nothing from the reporting layer, so a change to a figure or a claims rule reruns no run;
- ``report.py``: tables, figures, claims and the conclusion, from records only.

Every other parameter key of the experiment's section is a *run key*: the DVC run stages list exactly those
(``params:`` with keys) and a record's identity digest covers their values and the run's spec. While a run executes,
the keys it reads are tracked, and reading a plan or report key is an error that names the key (so the declared
dependencies cannot silently fall short).

``python -m fedpeft.experiments.runs --profile P --experiment E --run ID`` is the run stage: it executes one run and
writes its record atomically. The harness owns each run's runtime: torch's threads (``torch_threads``), the device of
every trainer (:func:`fedpeft.core.device.run_device`: ``auto``, CUDA when present), the checkpoints
(:mod:`fedpeft.core.checkpoints`: a folder per run, removed only once the record is written, cleared when the run's
settings or the code changed) and the peak memory in the record's ``meta``. A killed run of any kind resumes exactly
where its last checkpoint left it: after a round (the in-process round loop), a step (the LoRA-vs-QLoRA trainers) or a
finished part (a GLUE baseline, error-study case or merge client); ``tests/test_resume.py`` kills one run of every
kind and compares its resumed record with an uninterrupted one. Runs on Flower's engines restart from round 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import resource
import time
from datetime import datetime, timezone
from types import ModuleType
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from fedpeft.core import checkpoints, registry
from fedpeft.core.checkpoints import RunCheckpoints, rng_states, set_rng_states
from fedpeft.core.config import Settings
from fedpeft.core.device import apply_torch_threads, resolve_device, run_device
from fedpeft.core.profiling import machine_description
from fedpeft.core.records import RecordError, RunRecord, RunSpec, record_dir

RECORDS_ONLY_ENV = "FEDPEFT_RECORDS_ONLY"  # set by the report stage: a missing or stale record is an error there

class TrackedParams(dict):
    """A parameter dict that remembers which keys were read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


_PREPARED: dict[str, tuple[str, Any, frozenset[str], dict[str, Any]]] = {}


def reused_in_process(prepare: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an experiment's preparation, ``prepare(settings, *args)``, whose result depends only on the settings
    and the arguments (data loaded and tokenized, a base model pretrained): called again in the same process with the
    same settings and arguments, it returns the first result instead of computing it again. ``collect`` runs every
    missing run of an experiment in one process (a notebook, nbval), where the preparation was repeated for each run
    (GLUE's and the code LM's 2 s of base-model pretraining, 30 and 14 times in the embedded profile); a DVC run stage
    is a process of its own and prepares once either way. Only the latest result is kept.

    A reused result must not be changed by a run (copy a model before training it). So that a run cannot tell a reused
    preparation from a fresh one, the parameter keys it read are marked read again (each record lists what it read),
    and the global random states (torch, numpy, random, CUDA) are set to what they were when it first returned;
    ``tests/test_records.py`` checks that a run after a reused preparation writes the same record as a fresh one."""

    name = f"{prepare.__module__}.{prepare.__qualname__}"

    @functools.wraps(prepare)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> Any:
        key = json.dumps({"settings": [settings.profile, settings.experiment, dict(settings.params), settings.data_root,
                                       settings.cache_dir], "args": args, "kwargs": kwargs}, sort_keys=True, default=str)
        kept = _PREPARED.get(name)
        if kept is not None and kept[0] == key:
            _, result, read, states = kept
            if isinstance(settings.params, TrackedParams):
                settings.params.read |= read
            set_rng_states(states)
            return result
        _PREPARED.pop(name, None)  # free the previous result before computing the next
        before = set(getattr(settings.params, "read", ()))
        result = prepare(settings, *args, **kwargs)
        read = frozenset(set(getattr(settings.params, "read", ())) - before)
        _PREPARED[name] = (key, result, read, rng_states())
        return result

    return wrapper


def runs_module(experiment: str) -> ModuleType:
    """The experiment's runs module (through the registry: a clear error for an unknown experiment)."""
    return registry.get(experiment).runs


def run_keys(experiment: str, schema_keys, kind: str = "run") -> list[str]:
    """The experiment's parameter keys a run of ``kind`` may read: all but its plan and report keys and the keys
    that only other kinds read (``KIND_KEYS``)."""
    declared = registry.get(experiment)
    others = set().union(*(keys for k, keys in declared.kind_keys.items() if k != kind))
    return sorted(k for k in schema_keys if k not in declared.plan_keys | declared.report_keys | others)


def identity(settings: Settings, spec: RunSpec) -> str:
    """Digest of what makes a run's result: the experiment, the profile, the spec and every run key's value."""
    keys = run_keys(settings.experiment, settings.params, spec.kind)
    payload = {"experiment": settings.experiment, "profile": settings.profile, "run": spec.run_id, "args": spec.args,
               "params": {k: settings.params[k] for k in keys}}
    if spec.kind != "run":
        payload["kind"] = spec.kind
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_spec(settings: Settings, run_id: str) -> RunSpec:
    specs = runs_module(settings.experiment).run_specs(settings)
    for spec in specs:
        if spec.run_id == run_id:
            return spec
    raise ValueError(f"--run {run_id!r} is not in the {settings.profile} plan of {settings.experiment}; "
                     f"planned runs: {[s.run_id for s in specs]}")


def execute(settings: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:
    """Run one spec with tracked parameters and return its record, identity and provenance filled in."""
    module = runs_module(settings.experiment)
    apply_torch_threads(int(settings.params.get("torch_threads", 0)))  # the harness owns the runtime, not each experiment
    device = resolve_device(run_device(settings.params))
    tracked = TrackedParams(settings.params)
    start = time.perf_counter()
    record = module.execute(dataclasses.replace(settings, params=tracked), spec, progress)
    allowed = set(run_keys(settings.experiment, settings.params, spec.kind))
    if tracked.read - allowed:
        raise RuntimeError(f"{settings.experiment} run {spec.run_id} read {sorted(tracked.read - allowed)}, declared as plan or "
                           f"report keys in fedpeft/experiments/{settings.experiment}/settings.py; a run may read only {sorted(allowed)}")
    record.meta.update(
        identity=identity(settings, spec), params_read=sorted(tracked.read), machine=machine_description(),
        stage_wall_s=round(time.perf_counter() - start, 3), written_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        device=device.type, **process_peak_memory(),
    )
    return record


def process_peak_memory() -> dict[str, Any]:
    """The process's peak memory so far, in MiB (2**20 bytes), and which peak it is: CUDA's largest allocation when a
    GPU was used, else the peak resident set size (a run stage is a process of its own, so this is the run's peak,
    imports included; runs made one after another in a notebook share one process, whose peak only grows)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), "memory_kind": "cuda_process_max_allocated"}
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_mib": round(kib / 1024, 1), "memory_kind": "cpu_process_peak_rss"}


#: Run keys a checkpoint does not depend on: a run stopped by its time limit resumes under a longer one.
RESUME_NEUTRAL_KEYS = ("time_limit_s",)


def run_checkpoints(settings: Settings, spec: RunSpec) -> RunCheckpoints:
    """The run's checkpoint folder, ``<cache>/checkpoints/<profile>/<experiment>/<run id>/``, valid for its identity
    (but :data:`RESUME_NEUTRAL_KEYS`) and the library's code."""
    folder = settings.cache_dir / "checkpoints" / settings.profile / settings.experiment / spec.run_id
    params = {k: v for k, v in dict(settings.params).items() if k not in RESUME_NEUTRAL_KEYS}
    return RunCheckpoints(folder, f"{identity(dataclasses.replace(settings, params=params), spec)}-{checkpoints.code_digest()}")


def run_and_write(settings: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:
    """Execute one run with its checkpoints active and write its record; the checkpoints are removed only once the
    record is written, so a failed write (a full disk, a read-only folder) costs no completed work."""
    ckpt = run_checkpoints(settings, spec)
    why = ckpt.open()
    if why:
        print(f"{spec.run_id}: its checkpoints in {ckpt.folder} were cleared ({why}); starting afresh")
    resumed = ckpt.resumed_parts()
    if resumed:
        print(f"{spec.run_id}: resuming from the checkpoints in {ckpt.folder} ({', '.join(resumed)})")
    with checkpoints.activated(ckpt):
        record = execute(settings, spec, progress)
    record.meta["resumed_from"] = resumed
    folder = record_dir(settings.profile, settings.experiment, spec.run_id)
    try:
        record.write(folder)
    except OSError as err:
        raise OSError(err.errno, f"the record of {settings.experiment} run {spec.run_id} could not be written to {folder} "
                      f"({err.strerror}); its checkpoints in {ckpt.folder} are kept, so rerunning it after freeing the "
                      "folder resumes where it ended") from err
    ckpt.close()
    return record


def collect(settings: Settings, progress: bool = True) -> dict[str, RunRecord]:
    """Every planned run's record, by run id. A record that is missing, damaged or made with other settings is
    recomputed and written, with a line saying why, unless ``FEDPEFT_RECORDS_ONLY=1`` (the report stage, whose run
    stages DVC has already brought up to date), where it is an error naming the run."""
    records_only = os.environ.get(RECORDS_ONLY_ENV) == "1"
    out: dict[str, RunRecord] = {}
    specs = runs_module(settings.experiment).run_specs(settings)
    for spec in tqdm(specs, desc="runs", disable=not progress):
        folder = record_dir(settings.profile, settings.experiment, spec.run_id)
        want = identity(settings, spec)
        try:
            record = RunRecord.read(folder)
            why = None if record.meta.get("identity") == want else "its record was made with other settings"
        except RecordError as err:
            why = str(err)
        if why is not None:
            if records_only:
                raise RecordError(f"{settings.experiment} run {spec.run_id}: {why} ({folder}); its run stage must run first "
                                  f"(dvc repro {settings.experiment}_{spec.kind}@{spec.run_id})")
            print(f"{spec.run_id}: running ({why})")
            record = run_and_write(settings, spec, progress)
        out[spec.run_id] = record
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one planned run of an experiment and write its result record.")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--experiment", required=True, choices=registry.names())
    parser.add_argument("--run", required=True, help="the run id (a key of the experiment's run stage)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.no_progress:  # and no bars of Hugging Face's libraries either ("Loading weights"), read when they are imported
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    settings = registry.get(args.experiment).load(args.profile)
    record = run_and_write(settings, find_spec(settings, args.run), progress=not args.no_progress)
    print(f"{args.experiment} {args.run}: record written in {record.meta['stage_wall_s']:.1f} s")


if __name__ == "__main__":
    main()
