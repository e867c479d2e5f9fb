import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from fedpeft.core.device import resolve_precision
from fedpeft.core.profiling import measure
from fedpeft.reporting.outputs import ClaimsTable, mean_spread, save_figure, write_metrics, write_table
from fedpeft.reporting.summary import collect


def test_table_written_as_booktabs_latex_and_markdown(tmp_path):
    df = pd.DataFrame({"method": ["fp32", "int8_dyn"], "accuracy %": [85.2, 84.95]})
    paths = write_table(df, tmp_path, "t", "A caption")
    tex = paths["tex"].read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"int8\_dyn" in tex and r"accuracy \%" in tex and r"\caption{A caption}" in tex
    md = paths["md"].read_text()
    assert "| method" in md and "84.95" in md


def test_metrics_are_flat_json_with_nan_as_null(tmp_path):
    path = write_metrics({"b": np.float32(1.5), "a": float("nan")}, tmp_path / "m.json")
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5}


def test_figures_saved_as_png_and_pdf_without_temporary_leftovers(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path, "fig")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and paths["pdf"].read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]


def test_claims_table_verdicts():
    t = ClaimsTable("local")
    t.add("a", "1", "1", True)
    t.add("b", "1", "2", False)
    t.add("c", "1", "-", None)
    assert t.frame()["verdict"].tolist() == ["holds", "does not hold", "not testable here"]


def test_mean_spread():
    assert mean_spread([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_spread([4.0]) == (4.0, 0.0)


def test_measure_reports_time_and_memory_kind():
    with measure() as m:
        block = np.ones(20_000_000)  # 160 MB
        m.items = 10
    del block
    assert m.wall_s > 0 and m.memory_kind == "cpu_peak_rss_delta"
    assert m.peak_memory_bytes > 100e6
    assert m.throughput == pytest.approx(10 / m.wall_s)


def test_resolve_precision():
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("auto") in ("fp32", "bf16")


def test_summary_collects_headlines_and_claims(tmp_path):
    exp = tmp_path / "exp_a"
    exp.mkdir()
    (exp / "headline.md").write_text("**headline**\n")
    (exp / "claims.md").write_text("**claims**\n")
    pd.DataFrame({"verdict": ["holds", "does not hold", "holds"]}).to_csv(exp / "claims.csv", index=False)
    text = collect(tmp_path)
    assert "## exp_a" in text and "**headline**" in text and "**claims**" in text
    assert "2 holds, 1 does not hold" in text
    with pytest.raises(FileNotFoundError, match="no experiment reports"):
        collect(tmp_path / "exp_a")


def test_lock_digest_follows_the_pins_not_the_comments(tmp_path):
    from fedpeft.reporting.outputs import lock_digest

    a, b, c = tmp_path / "a.lock", tmp_path / "b.lock", tmp_path / "c.lock"
    a.write_text("# made by uv\nnumpy==2.4.6 \\\n    --hash=sha256:aa\n    # via pandas\n")
    b.write_text("# made by another tool\n\nnumpy==2.4.6 \\\n    --hash=sha256:aa\n    # via torch\n")
    c.write_text("# made by uv\nnumpy==2.4.7 \\\n    --hash=sha256:aa\n    # via pandas\n")
    assert lock_digest(a) == lock_digest(b) != lock_digest(c)
    assert len(lock_digest(a)) == 16


def test_versions_table_says_whether_the_installed_packages_are_the_locked_ones(tmp_path, monkeypatch):
    from fedpeft.reporting import outputs

    lock = tmp_path / "requirements.lock"
    lock.write_text("Numpy==1.0.0 \\\n    --hash=sha256:aa\npandas==" + outputs.metadata.version("pandas") + "\n")
    assert outputs.locked_versions(lock) == {"numpy": "1.0.0", "pandas": outputs.metadata.version("pandas")}
    monkeypatch.setattr(outputs, "REPO_ROOT", tmp_path)
    same = outputs.package_versions(("pandas",)).set_index("package")["locked"]
    assert same["requirements.lock (sha256)"] == "installed = locked"
    differs = outputs.package_versions(("pandas", "numpy")).set_index("package")
    assert differs.loc["numpy", "locked"] == "1.0.0" != differs.loc["numpy", "version"]
    assert differs.loc["requirements.lock (sha256)", "locked"] == "installed differs from the lock"
