"""The figures draw what their tables hold: bar heights and error-bar ends, axes from zero or on a log scale for
quantities that cannot be negative, on tiny hand-made tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from fedpeft.reporting import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


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
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(map(tuple, drawn)) == sorted(zip(ptq["size_mib"], ptq["accuracy_pct"], strict=True))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fp32", "int8"]  # named in a legend, not beside the points


def test_a_short_log_axis_is_labelled_with_plain_numbers():
    runs = pd.DataFrame({"total_MiB": [20.0, 30.0, 60.0], "test_macro_f1": [0.7, 0.8, 0.75], "label": ["a", "a", "b"], "seed": [0, 1, 0]})
    fig = plots.score_vs_bytes(runs)
    fig.canvas.draw()
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_xticklabels() if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    assert shown == ["20", "50"] and not any(t.get_text() for t in ax.xaxis.get_minorticklabels())


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


def _lines(ax) -> list[tuple[np.ndarray, np.ndarray]]:
    """The data lines of an axes (x, y), in the order drawn (seaborn: one per hue level, in order of appearance)."""
    return [(np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)) for line in ax.get_lines()
            if len(line.get_xdata()) > 1]


def _band(ax, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper edge of the ``index``-th error band (a fill_between polygon), per x."""
    vertices = ax.collections[index].get_paths()[0].vertices
    edges = pd.DataFrame(vertices, columns=["x", "y"]).groupby("x")["y"]
    return edges.min().to_numpy(), edges.max().to_numpy()


def _history() -> pd.DataFrame:
    rows = [{"round": r, "seed": s, "partition": p, "accuracy": 0.1 * r + 0.01 * (0, 1, 5)[s] * (r + 1) + (0.2 if p == "iid" else 0.0)}
            for p in ("iid", "dirichlet") for s in (0, 1, 2) for r in (0, 1, 2)]
    return pd.DataFrame(rows)


def _mean_sd(df: pd.DataFrame, by: str, x: str, y: str, level) -> tuple[np.ndarray, np.ndarray]:
    g = df[df[by] == level].groupby(x)[y]
    return g.mean().to_numpy(), g.std().to_numpy()  # sample sd over seeds (ddof 1)


def test_per_round_lines_are_the_seeds_mean_with_a_band_of_one_sd():
    history = _history()
    ax = plots.metric_per_round(history, "accuracy", "accuracy (%)", scale=100).axes[0]
    for index, (level, (x, y)) in enumerate(zip(("iid", "dirichlet"), _lines(ax), strict=True)):
        mean, sd = _mean_sd(history, "partition", "round", "accuracy", level)
        assert x.tolist() == [0, 1, 2] and y == pytest.approx(100 * mean)
        low, high = _band(ax, index)
        assert low == pytest.approx(100 * (mean - sd)) and high == pytest.approx(100 * (mean + sd))


def test_per_step_and_per_round_panels_draw_the_mean_and_sd_over_seeds():
    history = _history().rename(columns={"partition": "scenario"}).assign(farmer_steps=lambda d: 5 * d["round"])
    ax = plots.metric_per_step(history, "accuracy", "macro F1").axes[0]
    x, y = _lines(ax)[1]
    mean, sd = _mean_sd(history, "scenario", "farmer_steps", "accuracy", "dirichlet")
    assert x.tolist() == [0, 5, 10] and y == pytest.approx(mean) and np.concatenate(_band(ax, 1)) == pytest.approx(np.concatenate([mean - sd, mean + sd]))
    steps = history.rename(columns={"scenario": "arm", "farmer_steps": "step", "accuracy": "loss"})
    ax = plots.loss_per_step(steps).axes[0]
    mean, sd = _mean_sd(steps, "arm", "step", "loss", "iid")
    assert _lines(ax)[0][1] == pytest.approx(mean) and np.concatenate(_band(ax, 0)) == pytest.approx(np.concatenate([mean - sd, mean + sd]))  # not a bootstrap CI
    grouped = _history().assign(sharding=lambda d: np.where(d["seed"] == 0, "a", "b"))
    fig = plots.score_per_round_by_group(grouped, "accuracy", "accuracy", hue="partition", col="sharding")
    for ax, sharding in zip(fig.axes, ("a", "b"), strict=True):
        part = grouped[grouped["sharding"] == sharding]
        assert _lines(ax)[0][1] == pytest.approx(_mean_sd(part, "partition", "round", "accuracy", "iid")[0])


def test_traffic_bars_are_the_totals_and_their_labels_the_costs():
    comm = pd.DataFrame({"precision": ["fp32", "int8"], "total_mib": [332.3, 85.6], "cost_usd": [1661.0, 427.9]})
    ax = plots.traffic_and_cost(comm).axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([332.3, 85.6]) and ax.get_ylim()[0] == 0
    assert [t.get_text() for t in ax.texts] == ["$1,661", "$428"]


def test_the_runtime_breakdown_stacks_each_runs_parts():
    split = pd.DataFrame({"arm": ["a", "b"], "train_s": [10.0, 4.0], "eval_s": [2.0, 1.0], "aggregate_s": [0.5, 0.25]})
    ax = plots.runtime_breakdown(split).axes[0]
    bars = pd.DataFrame([(p.get_y(), p.get_x(), p.get_width()) for p in ax.patches], columns=["y", "left", "width"])
    for (_, run), (_, drawn) in zip(split.iterrows(), bars.groupby("y", sort=True), strict=True):
        parts = [run["train_s"], run["eval_s"], run["aggregate_s"]]
        assert drawn["width"].tolist() == pytest.approx(parts)
        assert drawn["left"].tolist() == pytest.approx([0, parts[0], parts[0] + parts[1]])


def test_measured_and_modelled_seconds_and_the_scale_curve_draw_their_tables():
    rounds = pd.DataFrame({"round": [1, 2, 1, 2], "seed": [0, 0, 1, 1], "measured_s": [2.0, 3.0, 4.0, 5.0],
                           "modelled_s": [1.0, 1.0, 1.0, 1.0], "modelled_no_latency_s": [0.5, 0.5, 0.5, 0.5]})
    ax = plots.measured_vs_modelled(rounds).axes[0]
    assert [y.tolist() for _, y in _lines(ax)] == [[3.0, 4.0], [1.0, 1.0], [0.5, 0.5]] and ax.get_yscale() == "log"
    scale = pd.DataFrame({"farmers": [8, 32, 8, 32], "engine": ["inprocess", "inprocess", "flower", "flower"],
                          "s_per_round": [1.0, 3.0, 5.0, 20.0], "peak_mib": [100.0, 120.0, 900.0, 3000.0],
                          "farmer_data_mib": [10.0, 40.0, 10.0, 40.0]})
    speed, memory = plots.scale_curve(scale).axes
    assert [y.tolist() for _, y in _lines(speed)] == [[1.0, 3.0], [5.0, 20.0]]
    assert [y.tolist() for _, y in _lines(memory)] == [[100.0, 120.0], [900.0, 3000.0], [10.0, 40.0]]


def test_image_figures_show_each_image_with_its_title():
    import torch

    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    fig = plots.image_grid(images, ["weed", "crop"], columns=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["weed", "crop"] and len(fig.axes) == 3
    assert all((ax.images[0].get_array() == img.permute(1, 2, 0).numpy()).all() for ax, img in zip(shown, images, strict=True))
    sample = np.zeros((4, 4, 3), dtype=np.uint8)
    ax = plots.single_image(sample, "a sample " * 10).axes[0]
    assert (ax.images[0].get_array() == sample).all() and len(ax.get_title()) == 40


def test_a_caption_says_when_a_y_axis_does_not_start_at_zero():
    steps = pd.DataFrame({"step": [1, 2, 1, 2], "loss": [3.8, 3.2, 3.6, 3.0], "arm": ["lora", "lora", "qlora", "qlora"]})
    note = plots.axis_note(plots.loss_per_step(steps))
    assert note.startswith("The y-axis starts at ") and "not at zero" in note
    comm = pd.DataFrame({"precision": ["fp32", "int8"], "total_mib": [332.3, 85.6], "cost_usd": [1661.0, 427.9]})
    assert plots.axis_note(plots.traffic_and_cost(comm)) == ""  # bars from zero
    errors = pd.DataFrame({"round": [1, 2], "mean": [0.4, 0.35], "method": "naive", "sharding": "iid"})
    assert plots.axis_note(plots.aggregation_error_per_round(errors)) == ""  # a log axis
    split = pd.DataFrame({"arm": ["a", "b"], "train_s": [10.0, 4.0], "eval_s": [2.0, 1.0], "aggregate_s": [0.5, 0.25]})
    assert plots.axis_note(plots.runtime_breakdown(split)) == ""  # categories on y, seconds from zero on x
    assert plots.axis_note(plots.single_image(np.zeros((4, 4, 3), dtype=np.uint8), "sample")) == ""
