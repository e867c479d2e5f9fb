"""The figures draw what their tables hold: bar heights and error-bar ends, axes from zero or on a log scale for
quantities that cannot be negative, on tiny hand-made tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from fedpeft.reporting import plots  # noqa: E402


def _speed() -> pd.DataFrame:
    rows = []
    for model, base in (("lm", 0.1), ("unet", 2.0)):
        for arm, factor in (("lora", 1.2), ("qlora", 1.0)):
            for seed, jitter in zip((0, 1, 2), (-0.01, 0.0, 0.01), strict=True):
                rows.append({"model": model, "arm": arm, "seed": seed, "steps_per_s": base * factor + jitter * base,
                             "peak_memory_mib": 1000 * factor + 10 * seed, "memory_kind": "cpu_peak_rss_delta"})
    return pd.DataFrame(rows)


def test_speed_and_memory_bars_and_error_bars_are_the_runs_mean_and_sd():
    speed = _speed()
    fig = plots.arms_speed_memory(speed)
    axes = np.array(fig.axes).reshape(2, 2)
    for row, value in enumerate(("steps_per_s", "peak_memory_mib")):
        bars = plots.arm_bars(speed, value)
        for col, model in enumerate(("lm", "unet")):
            ax, want = axes[row][col], bars[bars["model"] == model]
            heights = [p.get_height() for p in ax.patches]
            assert heights == pytest.approx(want["mean"].tolist())
            # each error bar is a vertical segment centred on its own bar, from mean - sd to mean + sd
            segments = [seg for coll in ax.collections for seg in coll.get_segments()]
            assert len(segments) == len(want)
            for seg, patch, (_, w) in zip(segments, ax.patches, want.iterrows(), strict=True):
                (x0, y0), (x1, y1) = seg
                assert x0 == pytest.approx(patch.get_x() + patch.get_width() / 2) == pytest.approx(x1)
                assert sorted((y0, y1)) == pytest.approx([w["mean"] - w["sd"], w["mean"] + w["sd"]])
            assert ax.get_ylim()[0] == 0
    assert plots.arm_bars(speed, "steps_per_s").set_index(["model", "arm"]).loc[("lm", "qlora"), "runs"] == 3


def test_size_against_accuracy_starts_both_axes_at_zero():
    ptq = pd.DataFrame({"method": ["fp32", "int8"], "size_mib": [1.67, 0.43], "accuracy_pct": [82.20, 82.29]})
    ax = plots.size_vs_accuracy(ptq).axes[0]
    assert ax.get_ylim() == (0, 100) and ax.get_xlim()[0] == 0


def test_aggregation_errors_are_on_a_log_axis_with_exact_methods_at_the_floor():
    errors = pd.DataFrame({"round": [1, 2, 1, 2], "mean": [0.4, 0.35, 0.0, 3e-17], "method": ["naive", "naive", "flora", "flora"],
                           "sharding": "iid"})
    ax = plots.aggregation_error_per_round(errors).axes[0]
    assert ax.get_yscale() == "log"
    drawn = np.concatenate([line.get_ydata() for line in ax.get_lines() if len(line.get_ydata())])
    assert drawn.min() == plots.ERROR_FLOOR and drawn.max() == pytest.approx(0.4)
    study = pd.DataFrame({"clients": [2, 4, 2, 4], "sharding": "iid", "method": ["naive", "naive", "svd", "svd"],
                          "mean_relative_error": [0.4, 0.43, 0.0, 1e-12]})
    assert all(ax.get_yscale() == "log" for ax in plots.error_vs_clients(study).axes)


def test_score_against_bytes_marks_each_runs_seed():
    runs = pd.DataFrame({"total_MiB": [1.0, 1.0, 10.0], "test_macro_f1": [0.7, 0.8, 0.75], "label": ["a", "a", "b"], "seed": [0, 1, 0]})
    ax = plots.score_vs_bytes(runs).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "seed (test fold)" in labels and {"0", "1"} <= set(labels)


def test_the_verdict_overview_stacks_each_experiments_counts():
    tally = pd.DataFrame({"experiment": ["a", "b", "all"], "holds": [2, 0, 2], "does not hold": [1, 3, 4], "inconclusive": [0, 1, 1],
                          "not testable here": [1, 0, 1], "fact": [0, 0, 0], "claims": [4, 4, 8]})
    ax = plots.verdict_overview(tally).axes[0]
    per_row: dict[int, list[float]] = {}
    for p in ax.patches:
        per_row.setdefault(round(p.get_y() + p.get_height() / 2), []).append(p.get_width())
    # row 0 is experiment a, row 1 is b, in verdict order; the total row is not drawn
    assert per_row == {0: [2, 1, 0, 1, 0], 1: [0, 3, 1, 0, 0]}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["holds", "does not hold", "inconclusive", "not testable here", "fact"]
