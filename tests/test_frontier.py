"""The savings frontier's builders (fedpeft.reporting.frontier) on tiny hand-made tables that flip each verdict."""

import pandas as pd
import pytest

from fedpeft.reporting.frontier import pareto_front, savings_table


def _runs(arms: dict[str, tuple[float, list[float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"technique": t, "seed": seed, "total_bytes": b, "score": s}
                         for t, (b, scores) in arms.items() for seed, s in enumerate(scores)])


def test_the_pareto_front_keeps_only_the_undominated_points():
    points = pd.DataFrame({"MiB": [100.0, 10.0, 10.0, 1.0, 50.0], "score": [90.0, 89.0, 85.0, 80.0, 88.0]})
    # (10, 85) loses to (10, 89); (50, 88) loses to (10, 89); the rest trade bytes for score
    assert pareto_front(points, "MiB", "score").tolist() == [True, True, False, True, False]
    assert pareto_front(points.iloc[[0, 0]].reset_index(drop=True), "MiB", "score").tolist() == [True, True]  # ties


@pytest.mark.parametrize("lora, verdict, reading", [
    ([89.9, 90.1, 90.0], "holds", "no measurable cost"),                      # -0.0 points, tight
    ([89.5, 89.6, 89.4], "holds", "a measurable cost, at most 1 point"),     # -0.5 [-0.75, -0.25]
    ([86.0, 86.2, 85.8], "does not hold", "a measurable cost, more than 1 point"),
    ([88.0, 92.0, 89.0], "inconclusive", "no measurable cost (nor is it surely under 1 point)"),
    ([91.0, 91.2, 91.1], "holds", "a measurable gain"),
])
def test_savings_are_ratios_of_bytes_and_costs_are_paired_by_seed(lora, verdict, reading):
    runs = _runs({"full model": (48 * 2**20, [90.0, 90.2, 89.8]), "LoRA": (2**20, lora)})
    table = savings_table(runs, "full model", margin=1.0).set_index("technique")
    assert table.loc["LoRA", "saved_x"] == pytest.approx(48.0) and table.loc["full model", "saved_x"] == 1.0
    assert table.loc["LoRA", "verdict"] == verdict and table.loc["full model", "verdict"] == "baseline"
    assert table.loc["LoRA", "reading"].startswith("saves 48x at ") and table.loc["LoRA", "reading"].endswith(reading)
    assert table.loc["LoRA", "seeds"] == 3 and table.loc["LoRA", "total_MiB"] == 1.0


def test_a_seed_only_one_arm_ran_is_left_out_and_bad_input_is_named():
    runs = _runs({"full model": (8.0, [90.0, 90.0, 90.0]), "int8": (2.0, [89.0, 89.5])})
    table = savings_table(runs, "full model").set_index("technique")
    assert table.loc["int8", "seeds"] == 2 and table.loc["int8", "cost_points"] == pytest.approx(-0.75)
    with pytest.raises(ValueError, match="baseline = 'fp32' has no runs; techniques: \\['full model', 'int8'\\]"):
        savings_table(runs, "fp32")
    with pytest.raises(ValueError, match="lacks \\['score'\\]"):
        savings_table(runs.drop(columns="score"), "full model")


def test_the_frontier_figure_draws_a_marker_per_technique_and_the_front():
    import matplotlib

    matplotlib.use("Agg")
    from fedpeft.reporting.plots import savings_frontier

    runs = _runs({"full model": (48.0, [90.0, 90.2, 89.8]), "LoRA": (1.0, [89.8, 90.0, 89.9]), "int8": (12.0, [88.0, 88.1, 87.9])})
    fig = savings_frontier(savings_table(runs, "full model"))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Pareto frontier", "full model", "LoRA", "int8"]
    front = ax.get_lines()[0]
    assert list(front.get_xdata()) == pytest.approx([1.0 / 2**20, 48.0 / 2**20])  # int8 is dominated by LoRA
