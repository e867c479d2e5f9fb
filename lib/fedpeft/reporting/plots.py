"""The study's figures. Each function takes a tidy DataFrame and returns a matplotlib Figure in the study style
(call :func:`fedpeft.reporting.use_study_style` once first); saving is :func:`fedpeft.reporting.save_figure`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def metric_per_round(history: pd.DataFrame, y: str, ylabel: str, hue: str = "partition", scale: float = 1.0):
    """Mean over seeds per round with a +/- 1 standard deviation band, one line per ``hue`` value."""
    df = history.assign(**{y: history[y] * scale})
    fig, ax = plt.subplots()
    sns.lineplot(data=df, x="round", y=y, hue=hue, errorbar="sd", marker="o", ax=ax)
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def size_vs_accuracy(ptq: pd.DataFrame):
    """Saved model size (MiB) against test accuracy, one point per quantization method."""
    fig, ax = plt.subplots()
    sns.scatterplot(data=ptq, x="size_mib", y="accuracy_pct", hue="method", s=90, ax=ax, legend=False)
    for _, r in ptq.iterrows():
        ax.annotate(r["method"], (r["size_mib"], r["accuracy_pct"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("saved model size (MiB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(0, ptq["size_mib"].max() * 1.25)
    return fig


def traffic_and_cost(comm: pd.DataFrame):
    """Total traffic (MiB, both directions, all rounds) per precision, with the cost on a second axis."""
    fig, ax = plt.subplots()
    sns.barplot(data=comm, x="precision", y="total_mib", hue="precision", ax=ax, legend=False)
    ax.set_ylabel("total traffic (MiB)")
    ax.set_xlabel("")
    for patch, usd in zip(ax.patches, comm["cost_usd"], strict=False):
        ax.annotate(f"${usd:,.0f}", (patch.get_x() + patch.get_width() / 2, patch.get_height()), ha="center", va="bottom")
    return fig


def score_per_round_by_group(history: pd.DataFrame, y: str, ylabel: str, hue: str, col: str, scale: float = 1.0):
    """One panel per ``col`` value (e.g. sharding), one line per ``hue`` value (e.g. aggregation)."""
    df = history.assign(**{y: history[y] * scale})
    grid = sns.relplot(data=df, x="round", y=y, hue=hue, col=col, kind="line", marker="o", errorbar="sd",
                       height=3.0, aspect=1.0, facet_kws={"sharey": True})
    grid.set_axis_labels("round (0 = initial model)", ylabel)
    for ax in grid.axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return grid.figure


def aggregation_error_per_round(errors: pd.DataFrame):
    """Relative Frobenius error of the aggregated delta-W per round (mean over layers), per method and sharding."""
    fig, ax = plt.subplots()
    sns.lineplot(data=errors, x="round", y="mean", hue="method", style="sharding", marker="o", errorbar=None, ax=ax)
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_xlabel("round")
    ax.set_ylabel("||mean dW - aggregated dW|| / ||mean dW||")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def error_vs_clients(study: pd.DataFrame):
    """Mean relative aggregation error against the number of clients, one panel per sharding."""
    grid = sns.relplot(data=study, x="clients", y="mean_relative_error", hue="method", col="sharding", kind="line",
                       marker="o", height=3.0, aspect=1.0)
    grid.set_axis_labels("clients K", "mean relative error of delta-W")
    for ax in grid.axes.flat:
        ax.set_yscale("symlog", linthresh=1e-6)
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
    """Training loss per optimizer step, one line per arm."""
    fig, ax = plt.subplots()
    sns.lineplot(data=steps, x="step", y="loss", hue="arm", marker="o", ax=ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def arms_speed_memory(speed: pd.DataFrame):
    """Two panels: steps/s (with its spread) and peak memory (MiB), per model and arm."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    sns.barplot(data=speed, x="model", y="steps_per_s", hue="arm", ax=ax1)
    for patch, (_, row) in zip(ax1.patches, speed.sort_values(["arm", "model"], key=lambda c: c.map(
            {m: i for i, m in enumerate(speed[c.name].unique())})).iterrows(), strict=False):  # seaborn may add patches
        ax1.errorbar(patch.get_x() + patch.get_width() / 2, row["steps_per_s"], yerr=row["steps_per_s_spread"], color="black", capsize=3)
    ax1.set_ylabel("steps/s (median of warm steps)")
    sns.barplot(data=speed, x="model", y="peak_memory_mib", hue="arm", ax=ax2, legend=False)
    ax2.set_ylabel(f"peak memory (MiB, {speed['memory_kind'].iloc[0]})")
    for ax in (ax1, ax2):
        ax.set_xlabel("")
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
    """Test score against total traffic (MiB, log scale), one point per run (seed)."""
    fig, ax = plt.subplots()
    sns.scatterplot(data=runs, x=x, y=y, hue=hue, style=hue, s=70, ax=ax)
    ax.set_xscale("log")
    ax.set_xlabel("total traffic, both directions (MiB, log scale)")
    ax.set_ylabel("test macro F1")
    ax.legend(fontsize=7, loc="best")
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


def scale_curve(scale: pd.DataFrame):
    """Two panels against the number of farmers (log scale): seconds per round and peak memory (MiB), per engine;
    the farmers' own data (MiB) drawn as a dashed line on the memory panel."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    sns.lineplot(data=scale, x="farmers", y="s_per_round", hue="engine", marker="o", ax=ax1)
    sns.lineplot(data=scale, x="farmers", y="peak_mib", hue="engine", marker="o", ax=ax2, legend=False)
    data = scale.drop_duplicates("farmers")
    ax2.plot(data["farmers"], data["farmer_data_mib"], "k--", label="farmers' data")
    ax2.legend(loc="upper left")
    ax1.set_ylabel("seconds per round")
    ax2.set_ylabel("peak memory (MiB, process tree)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("farmers")
    return fig
