"""The study's figures. Each function takes a tidy DataFrame and returns a matplotlib Figure in the study style
(call :func:`fedpeft.reporting.use_study_style` once first); saving is :func:`fedpeft.reporting.save_figure`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter


def readable_log_axis(axis) -> None:
    """A log axis labelled at 1, 2 and 5 times each power of ten (at each power of ten alone where the axis spans more
    than 2.5 decades), written as plain numbers ("20", "0.5"), with unlabelled minor ticks: matplotlib's default labels
    every minor tick of a short range as "3x10^1", and they run into each other at print size. Call it after the
    data are drawn, so that the axis knows its range."""
    low, high = sorted(axis.get_view_interval())
    wide = low > 0 and high / low > 300  # beyond 2.5 decades, "1000" and "2000" run into each other: powers of ten only
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def axis_note(fig) -> str:
    """What a caption must say of a figure whose linear y-axis does not start at zero (a loss curve, say, zoomed so
    that its lines' differences show): "" when every such axis starts at zero or is a log axis."""
    starts = [min(ax.get_ylim()) for ax in fig.axes  # an image's axes are hidden; a horizontal bar chart's y is categories
              if ax.axison and not ax.images and ax.get_yscale() == "linear" and ax.has_data() and min(ax.get_ylim()) > 0]
    if not starts:
        return ""
    if len(starts) == 1:
        return f"The y-axis starts at {starts[0]:.3g}, not at zero, so that the differences between the lines show."
    return "The y-axes start above zero, so that the differences between the lines show."


def metric_per_round(history: pd.DataFrame, y: str, ylabel: str, hue: str = "partition", scale: float = 1.0):
    """Mean over seeds per round with a +/- 1 standard deviation band, one line per ``hue`` value."""
    df = history.assign(**{y: history[y] * scale})
    fig, ax = plt.subplots()
    sns.lineplot(data=df, x="round", y=y, hue=hue, errorbar="sd", marker="o", ax=ax)
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def block_loss_by_sample(blocks: pd.DataFrame, x: str = "loss", xlabel: str = "loss before training (nats/token)"):
    """One row per sample: a box of its blocks' values with every block drawn as a dot and the mean as a diamond,
    so that a small sample can be set beside the spread of a broad one."""
    order = list(dict.fromkeys(blocks["sample"]))
    fig, ax = plt.subplots(figsize=(6.4, 0.7 * len(order) + 1.4))
    sns.boxplot(data=blocks, x=x, y="sample", order=order, color="0.9", showfliers=False, ax=ax)
    sns.stripplot(data=blocks, x=x, y="sample", order=order, size=3, alpha=0.6, ax=ax)
    means = blocks.groupby("sample")[x].mean().reindex(order)
    ax.scatter(means.to_numpy(), range(len(order)), marker="D", color="black", zorder=5, label="mean")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    ax.legend(loc="lower right")
    return fig


def size_vs_accuracy(ptq: pd.DataFrame):
    """Saved model size (MiB) against test accuracy, one point per quantization method, named in the legend (points
    of nearly equal accuracy sit side by side, where labels beside them would overlap). Both axes start at zero
    (accuracy runs to 100 %), so a difference of a tenth of a point looks like one."""
    fig, ax = plt.subplots()
    sns.scatterplot(data=ptq, x="size_mib", y="accuracy_pct", hue="method", style="method", s=90, ax=ax)
    ax.legend(title="method", loc="lower right")
    ax.set_xlabel("saved model size (MiB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(0, ptq["size_mib"].max() * 1.25)
    ax.set_ylim(0, 100)
    return fig


def traffic_and_cost(comm: pd.DataFrame):
    """Total traffic (MiB, both directions, all rounds) per precision, with the cost on a second axis."""
    fig, ax = plt.subplots()
    sns.barplot(data=comm, x="precision", y="total_mib", hue="precision", errorbar=None, ax=ax, legend=False)
    ax.set_ylabel("total traffic (MiB)")
    ax.set_xlabel("")
    for patch, usd in zip(ax.patches, comm["cost_usd"], strict=False):
        ax.annotate(f"${usd:,.0f}", (patch.get_x() + patch.get_width() / 2, patch.get_height()), ha="center", va="bottom")
    return fig


def score_per_round_by_group(history: pd.DataFrame, y: str, ylabel: str, hue: str, col: str, scale: float = 1.0,
                             x: str = "round", xlabel: str = "round (0 = initial model)"):
    """One panel per ``col`` value (e.g. sharding), one line per ``hue`` value (e.g. aggregation), against ``x``
    (rounds, or the local epochs trained so far where rounds differ in length)."""
    df = history.assign(**{y: history[y] * scale})
    grid = sns.relplot(data=df, x=x, y=y, hue=hue, col=col, kind="line", marker="o", errorbar="sd",
                       height=3.0, aspect=1.0, facet_kws={"sharey": True})
    grid.set_axis_labels(xlabel, ylabel)
    for ax in grid.axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return grid.figure


#: Relative errors below this are drawn at it: they are rounding (float32 is exact to about 1e-7).
ERROR_FLOOR = 1e-9


def _error_axis(ax, what: str = "relative error of delta-W") -> None:
    ax.set_yscale("log")
    ax.set_ylim(bottom=ERROR_FLOOR / 2)
    ax.set_ylabel(f"{what}\n(log scale; exact methods at {ERROR_FLOOR:g})", fontsize=9)


def aggregation_error_per_round(errors: pd.DataFrame):
    """Relative Frobenius error of the aggregated delta-W per round (mean over layers), per method and sharding, on
    a log axis (an error is never negative; exact methods are drawn at :data:`ERROR_FLOOR`), legend outside."""
    df = errors.assign(mean=errors["mean"].clip(lower=ERROR_FLOOR))
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.lineplot(data=df, x="round", y="mean", hue="method", style="sharding", marker="o", errorbar=None, ax=ax)
    _error_axis(ax, "relative error of the aggregated delta-W")
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    return fig


def error_vs_clients(study: pd.DataFrame):
    """Mean relative aggregation error against the number of clients, one panel per sharding, on a log axis (exact
    methods drawn at :data:`ERROR_FLOOR`)."""
    df = study.assign(mean_relative_error=study["mean_relative_error"].clip(lower=ERROR_FLOOR))
    grid = sns.relplot(data=df, x="clients", y="mean_relative_error", hue="method", col="sharding", kind="line",
                       marker="o", errorbar=None, height=3.0, aspect=1.0)
    grid.set_axis_labels("clients K", "")
    for ax in grid.axes.flat:
        _error_axis(ax)
    return grid.figure


def runtime_breakdown(split: pd.DataFrame, label: str = "arm"):
    """Seconds of local training, server evaluation and aggregation per run, stacked horizontally."""
    parts = ["train_s", "eval_s", "aggregate_s"]
    df = split.set_index(label)[parts].rename(columns=lambda c: c.removesuffix("_s"))
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(df) + 1.2))
    df.plot.barh(stacked=True, ax=ax)
    ax.set_xlabel("seconds")
    ax.set_ylabel("")
    ax.invert_yaxis()
    return fig


def loss_per_step(steps: pd.DataFrame):
    """Training loss per optimizer step, one line per arm: the mean over seeds with a +/- 1 standard deviation band."""
    fig, ax = plt.subplots()
    sns.lineplot(data=steps, x="step", y="loss", hue="arm", marker="o", errorbar="sd", ax=ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def arm_bars(speed: pd.DataFrame, value: str) -> pd.DataFrame:
    """What :func:`arms_speed_memory` draws for ``value``: per model and arm, the mean over runs (the bar) and the
    sample sd over runs (the error bar; 0 with one run). A replicate is a run, never a step."""
    g = speed.groupby(["model", "arm"], sort=False)[value]
    return g.agg(mean="mean", sd="std", runs="count").reset_index().fillna({"sd": 0.0})


def arms_speed_memory(speed: pd.DataFrame):
    """A panel per model and quantity (steps/s, peak memory in MiB): one bar per arm, its height the mean over runs
    and its error bar +/- the sample sd over runs (:func:`arm_bars`), each drawn on its own bar. Each panel has its
    own y-axis from zero (the models' speeds differ by orders of magnitude)."""
    models = list(dict.fromkeys(speed["model"]))
    quantities = (("steps_per_s", "steps/s (mean of runs)"),
                  ("peak_memory_mib", f"peak memory (MiB, {speed['memory_kind'].iloc[0]})"))
    fig, axes = plt.subplots(len(quantities), len(models), figsize=(3.6 * len(models), 5.6), squeeze=False)
    palette = dict(zip(dict.fromkeys(speed["arm"]), sns.color_palette(n_colors=speed["arm"].nunique()), strict=True))
    for row, (value, label) in enumerate(quantities):
        bars = arm_bars(speed, value)
        for col, model in enumerate(models):
            ax, part = axes[row][col], bars[bars["model"] == model]
            ax.bar(part["arm"], part["mean"], yerr=part["sd"], capsize=4, color=[palette[a] for a in part["arm"]])
            ax.set_ylim(bottom=0)
            ax.set_title(f"{model}: {label.split(' (')[0]}", fontsize=9)
            ax.set_ylabel(label if col == 0 else "", fontsize=8)
    fig.tight_layout()
    return fig


def metric_per_step(history: pd.DataFrame, y: str, ylabel: str, hue: str = "scenario"):
    """A metric against local optimizer steps per farmer (so runs with different round lengths line up); mean
    over seeds with a +/- 1 standard deviation band."""
    fig, ax = plt.subplots()
    sns.lineplot(data=history, x="farmer_steps", y=y, hue=hue, errorbar="sd", ax=ax)
    ax.set_xlabel("optimizer steps per farmer")
    ax.set_ylabel(ylabel)
    return fig


def image_grid(images, titles, columns: int = 6):
    """uint8 (N, 3, H, W) images in a grid, each with its title (e.g. its label)."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles, strict=False):  # the grid may have spare cells
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=8)
    return fig


def score_vs_bytes(runs: pd.DataFrame, x: str = "total_MiB", y: str = "test_macro_f1", hue: str = "label"):
    """Test score against total traffic (MiB, log scale), one point per run; the marker is the run's seed, which
    also chooses its test fold, so the horizontal bands are the folds."""
    fig, ax = plt.subplots()
    style = "seed (test fold)" if "seed" in runs else None
    df = runs.assign(**{style: runs["seed"].astype(str)}) if style else runs
    sns.scatterplot(data=df, x=x, y=y, hue=hue, style=style, s=70, ax=ax)
    ax.set_xscale("log")
    readable_log_axis(ax.xaxis)
    ax.set_xlabel("total traffic, both directions (MiB, log scale)")
    ax.set_ylabel("test macro F1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def savings_frontier(table: pd.DataFrame, ylabel: str = "score (points)"):
    """The savings frontier: mean score against mean total traffic (MiB, log scale), one marker per technique with
    the paired interval of its cost drawn around its mean (``cost_low``/``cost_high`` relative to ``cost_points``),
    and the Pareto frontier (``on_frontier``) joined by a line. ``table``: :func:`fedpeft.reporting.frontier.savings_table`."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    front = table[table["on_frontier"]].sort_values("total_MiB")
    ax.plot(front["total_MiB"], front["score_mean"], color="0.6", lw=1, zorder=1, label="Pareto frontier")
    # more techniques than any palette has colours a reader tells apart: each gets a colour and a marker, and with 10
    # colours and 9 markers no two of the first 90 share both
    colors = sns.color_palette("tab10", n_colors=10)
    markers = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
    for i, (_, row) in enumerate(table.iterrows()):
        low, high = row["cost_low"] - row["cost_points"], row["cost_high"] - row["cost_points"]
        err = None if pd.isna(low) else [[-low], [high]]
        ax.errorbar(row["total_MiB"], row["score_mean"], yerr=err, fmt=markers[i % len(markers)], color=colors[i % len(colors)],
                    capsize=3, label=row["technique"], zorder=2, markersize=6, alpha=0.9)
    ax.set_xscale("log")
    readable_log_axis(ax.xaxis)
    ax.set_xlabel("total traffic, both directions (MiB, log scale)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def single_image(image, title: str):
    """One (H, W, 3) image with a short title, e.g. a diffusion sample."""
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(image)
    ax.set_title(title[:40], fontsize=8)
    ax.axis("off")
    return fig


def measured_vs_modelled(rounds: pd.DataFrame):
    """Seconds per round: measured on the deployment engine against the network model's prediction (with and without
    its latency), per round; mean over seeds with a +/- 1 standard deviation band."""
    long = rounds.melt(id_vars=["round", "seed"], value_vars=["measured_s", "modelled_s", "modelled_no_latency_s"],
                       var_name="time", value_name="seconds")
    fig, ax = plt.subplots()
    sns.lineplot(data=long, x="round", y="seconds", hue="time", errorbar="sd", marker="o", ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per round (log scale)")
    return fig


def round_parts_bars(summary: pd.DataFrame):
    """Where a deployment round's time goes: one horizontal bar per run group, its mean seconds per round split into
    the critical path's parts (``PARTS`` columns of :func:`fedpeft.experiments.weeds_qlora_federated.report.
    parts_summary`), with the network model's round (no latency) marked as a black tick."""
    parts = [c for c in ("pickup_s", "startup_s", "load_s", "train_s", "return_s", "server_s") if c in summary]
    fig, ax = plt.subplots(figsize=(8.5, 0.6 * len(summary) + 2.2))
    left = np.zeros(len(summary))
    colours = sns.color_palette("colorblind", len(parts))
    for part, colour in zip(parts, colours, strict=True):
        ax.barh(summary["label"], summary[part], left=left, color=colour, label=part.removesuffix("_s"))
        left += summary[part].to_numpy()
    ax.scatter(summary["modelled_no_latency_s"], summary["label"], marker="|", s=400, color="black", zorder=3,
               label="network model")
    ax.set_xlabel("seconds per round (mean over rounds and seeds)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def scale_curve(scale: pd.DataFrame):
    """Two panels against the number of farmers (log scale): seconds per round and peak memory (MiB), per engine;
    the farmers' own data (MiB) drawn as a dashed line on the memory panel."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    sns.lineplot(data=scale, x="farmers", y="s_per_round", hue="engine", marker="o", errorbar=None, ax=ax1)
    sns.lineplot(data=scale, x="farmers", y="peak_mib", hue="engine", marker="o", errorbar=None, ax=ax2, legend=False)
    data = scale.drop_duplicates("farmers")
    ax2.plot(data["farmers"], data["farmer_data_mib"], "k--", label="farmers' data")
    ax2.legend(loc="upper left")
    ax1.set_ylabel("seconds per round")
    ax2.set_ylabel("peak memory (MiB, process tree)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        readable_log_axis(ax.xaxis)
        ax.set_xlabel("farmers")
    fig.tight_layout()
    return fig


#: The verdict words in the order a reader scans them, each with one colour used in every verdict figure.
VERDICT_COLOURS = {"holds": "#1b9e77", "does not hold": "#d95f02", "inconclusive": "#7570b3", "not testable here": "#bdbdbd",
                   "fact": "#e6ab02"}


def verdict_overview(tally: pd.DataFrame):
    """The seeds' claims per experiment, one horizontal bar each, split by verdict (counts; ``tally``: one row per
    experiment, a column per verdict word, as :func:`fedpeft.reporting.summary.tally` makes it, without the total)."""
    df = tally[tally["experiment"] != "all"].set_index("experiment")[[v for v in VERDICT_COLOURS if v in tally]]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(df) + 1.4))
    left = pd.Series(0.0, index=df.index)
    for verdict in df.columns:
        ax.barh(df.index, df[verdict], left=left, color=VERDICT_COLOURS[verdict], label=verdict)
        left += df[verdict]
    ax.invert_yaxis()
    ax.set_xlabel("claims of the seed report (count)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig
