"""The toy's runs: per seed, the running mean of ``samples`` standard normal numbers, one "round" per eighth."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedpeft.core.records import RunRecord, RunSpec


def run_specs(settings) -> list[RunSpec]:
    return [RunSpec(f"s{seed}", {"seed": seed}) for seed in settings["seeds"]]


def execute(settings, spec: RunSpec, progress: bool = True) -> RunRecord:  # noqa: ARG001 - the run contract
    values = np.random.default_rng(spec.args["seed"]).standard_normal(settings["samples"])
    rounds = np.arange(1, 9)
    history = pd.DataFrame({"round": rounds, "score": [values[: len(values) * r // 8].mean() for r in rounds]})
    return RunRecord(experiment=settings.experiment, run_id=spec.run_id, spec={"run_id": spec.run_id, **spec.args},
                     scalars={"score": float(values.mean())}, tables={"history": history}, meta={"device": "cpu"})
