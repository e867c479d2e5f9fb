"""The toy's report from its records: a headline, a figure and one claim (the mean is the claimed one, within 0.5)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from fedpeft.reporting.claims import ClaimsLedger, within
from fedpeft.reporting.study_report import StudyReport


def build(settings, records) -> str:
    declared_title = "Toy: the mean of generated numbers"
    report = StudyReport(settings, declared_title, "none (a test's toy)", "a test's toy notebook")
    scores = [r["score"] for r in records.values()]
    history = pd.concat([r.tables["history"].assign(seed=run) for run, r in records.items()])
    fig, ax = plt.subplots()
    ax.plot(history["round"], history["score"], "o")
    report.figure(fig, "score_per_round", "Running mean per round")
    claims = ClaimsLedger(settings.profile, settings.experiment)
    claims.add("The mean is the claimed one", f"{settings['claimed_mean']}",
               within(scores, settings["claimed_mean"], 0.5, "mean", unit=" units"), "score_per_round", key="mean")
    headline = pd.DataFrame({"runs": [len(scores)], "mean": [sum(scores) / len(scores)]})
    return report.finish(f"The mean is {headline['mean'][0]:.3f}.", headline, claims, {"mean": headline["mean"][0]},
                         history, "Generated numbers, two seeds.", "A toy: it tests the harness only.", records)
