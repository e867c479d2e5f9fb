"""The toy's settings: two seeds (a plan key), a sample size (a run key), a claimed mean (a report key). Its reports
go to ``$TOY_REPORTS/<profile>/toy_means`` (the test's scratch folder) rather than ``params/``'s reports folder."""

from __future__ import annotations

import os
from pathlib import Path

from fedpeft.core.config import REPO_ROOT, Settings

EXPERIMENT = "toy_means"
SCHEMA = {"seeds": list, "samples": int, "claimed_mean": float}
PLAN_KEYS = frozenset({"seeds"})
REPORT_KEYS = frozenset({"claimed_mean"})


def load(profile: str) -> Settings:
    reports = Path(os.environ["TOY_REPORTS"]) / profile
    return Settings(profile=profile, experiment=EXPERIMENT, params={"seeds": [0, 1], "samples": 64, "claimed_mean": 0.0},
                    data_root=REPO_ROOT, report_dir=reports / EXPERIMENT, cache_dir=reports / ".cache")
