"""Everything a report writes: one figure style, figures as PNG and PDF, tables as LaTeX (booktabs) and
markdown from the same DataFrame, flat ``metrics.json``, claims tables, and the package versions used.

All writes are atomic (written to a temporary file, then renamed), so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from fedpeft.core.config import REPO_ROOT
from fedpeft.core.files import atomic_write_text

STUDY_PACKAGES = (
    "torch", "torchvision", "torchao", "flwr", "flwr-datasets", "transformers", "peft", "bitsandbytes",
    "datasets", "pandas", "numpy", "scikit-learn", "matplotlib", "seaborn", "papermill", "dvc",
)  # fmt: skip


def use_study_style() -> None:
    """The study's one figure style (seaborn whitegrid, colour-blind palette, paper-sized fonts)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.15)
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "pdf.fonttype": 42,  # embed TrueType, editable in vector tools
            "svg.hashsalt": "fedpeft",
            "path.simplify": True,
        }
    )


def save_figure(fig, out_dir: Path, name: str) -> dict[str, Path]:
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf`` in ``out_dir`` (atomically); return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "pdf"):
        final = out_dir / f"{name}.{ext}"
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=f".{ext}")
        os.close(fd)
        # Fixed metadata keeps the files byte-stable across reruns.
        meta = {"Software": None} if ext == "png" else {"CreationDate": None, "Producer": None, "Creator": None}
        fig.savefig(tmp, format=ext, metadata=meta)
        os.replace(tmp, final)
        paths[ext] = final
    return paths


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def write_table(df: pd.DataFrame, out_dir: Path, name: str, caption: str, float_format: str = "{:.4g}",
                formats: tuple[str, ...] = ("tex", "md")) -> dict[str, Path]:
    """Write ``df`` as ``<name>.tex`` (booktabs) and ``<name>.md`` from the same values (only ``formats``)."""
    out_dir = Path(out_dir)
    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else float_format.format(v))
    # astype(str) would keep None/NaN as missing values in pandas 3, which LaTeX escaping cannot handle
    shown = shown.map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    md = f"**{caption}**\n\n" + shown.to_markdown(index=False) + "\n"
    escaped = shown.map(_latex_escape)
    escaped.columns = [_latex_escape(str(c)) for c in shown.columns]
    tex = escaped.style.hide(axis="index").to_latex(
        hrules=True, caption=_latex_escape(caption), label=f"tab:{name}", position="htbp", position_float="centering"
    )
    texts = {"tex": tex, "md": md}
    return {fmt: atomic_write_text(out_dir / f"{name}.{fmt}", texts[fmt]) for fmt in formats}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(metrics: Mapping[str, Any], path: Path) -> Path:
    """A flat JSON object of numbers for ``dvc metrics`` (keys sorted, NaN written as null)."""
    flat = {k: _plain(v) for k, v in sorted(metrics.items())}
    return atomic_write_text(Path(path), json.dumps(flat, indent=2) + "\n")


def write_csv(df: pd.DataFrame, path: Path, float_format: str = "%.6g") -> Path:
    return atomic_write_text(Path(path), df.to_csv(index=False, float_format=float_format))


#: Columns that label a trained number against a threshold (``claims.signal_label``: "above chance" or "no signal"):
#: a score near its threshold flips the label between CPU kinds (seen: EuroSAT's embedded Dirichlet row, on AVX2
#: kernels), so the nbval check shows them as ``~`` like the number itself.
TRAINED_LABEL_COLUMNS = frozenset({"signal"})


def table_structure(df: pd.DataFrame) -> str:
    """``df`` as text with every floating value (NaN too), and every label of a trained number
    (:data:`TRAINED_LABEL_COLUMNS`), replaced by ``~`` (index, columns, integers and other labels kept): what a rerun on
    any CPU reproduces exactly, for the nbval check. Trained floats are checked against the committed metrics within
    tolerances instead (tests/test_regeneration.py)."""
    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]) or col in TRAINED_LABEL_COLUMNS:
            shown[col] = "~"
    return f"{len(df)} rows\n" + shown.to_string()


def lock_digest(lock: Path) -> str:
    """First 16 hex digits of the sha256 of a lock file's requirement lines (pins and hashes), comments and blank
    lines left out: two reports with the same digest ran on the same package set, whatever the annotations say."""
    import hashlib

    lines = [line.strip() for line in Path(lock).read_text().splitlines()]
    content = "\n".join(line for line in lines if line and not line.startswith("#"))
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def package_versions(packages: Iterable[str] = STUDY_PACKAGES) -> pd.DataFrame:
    """Python, the given packages' installed versions against their pins (``requirements.lock``, or
    :func:`pinned_without_dependencies`), and :func:`lock_digest` of ``requirements.lock`` (the whole locked
    environment)."""
    import platform

    lock = REPO_ROOT / "requirements.lock"
    pins = {**(locked_versions(lock) if lock.is_file() else {}), **pinned_without_dependencies(REPO_ROOT / "pyproject.toml")}
    rows = [{"package": "python", "version": platform.python_version(), "locked": ""}]
    for name in packages:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        rows.append({"package": name, "version": version, "locked": pins.get(_canonical(name), "not locked")})
    digest = lock_digest(lock) if lock.is_file() else "missing"
    matches = all(r["version"] == r["locked"] for r in rows[1:])
    rows.append({"package": "requirements.lock (sha256)", "version": digest,
                 "locked": "installed = locked" if matches else "installed differs from the lock"})
    return pd.DataFrame(rows)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` pin in a lock file."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", Path(lock).read_text(), flags=re.M)
    return {_canonical(n): v for n, v in pins}


def pinned_without_dependencies(pyproject: Path) -> dict[str, str]:
    """``{canonical name: version}`` of ``[tool.fedpeft] install-without-dependencies`` in ``pyproject.toml``: packages
    ``make env`` installs with ``--no-deps`` after the lock, pinned there instead of in ``requirements.lock``."""
    import tomllib

    if not Path(pyproject).is_file():
        return {}
    specs = tomllib.loads(Path(pyproject).read_text()).get("tool", {}).get("fedpeft", {}).get("install-without-dependencies", [])
    return {_canonical(n): v for n, v in (spec.split("==", 1) for spec in specs if "==" in spec)}


def mean_spread(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    s = pd.Series(list(values), dtype=float)
    return float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else 0.0


class MarkdownReport:
    """A markdown report assembled from the same DataFrames and figures the notebook shows."""

    def __init__(self, title: str) -> None:
        self.parts: list[str] = [f"# {title}\n"]

    def text(self, markdown: str) -> None:
        self.parts.append(markdown.strip() + "\n")

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"{'#' * level} {text}\n")

    def figure(self, png_name: str, caption: str) -> None:
        self.parts.append(f"![{caption}]({png_name})\n\n*{caption}*\n")

    def table(self, df: pd.DataFrame, caption: str, float_format: str = "{:.4g}") -> None:
        shown = df.copy()
        for col in shown.columns:
            if pd.api.types.is_float_dtype(shown[col]):
                shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else float_format.format(v))
        self.parts.append(f"**{caption}**\n\n{shown.to_markdown(index=False)}\n")

    def write(self, path: Path) -> Path:
        return atomic_write_text(Path(path), "\n".join(self.parts))


def scale_gap(rows: Iterable[tuple[str, str, str]], profile: str) -> str:
    """The scale gap on both sides, as a markdown table: one row per aspect (model and parameters, data, steps per
    round, rounds, clients, lr, batch, precision, device, runs) with what the seed ran and what this profile ran."""
    table = pd.DataFrame(list(rows), columns=["", "the seed", f"this profile ({profile})"])
    if table.empty or (table.iloc[:, 1:].map(lambda v: not str(v).strip())).any().any():
        raise ValueError("a scale-gap table needs every aspect filled on both sides")
    return "**The scale gap**: what the seed ran and what this profile ran.\n\n" + table.to_markdown(index=False) + "\n"


_UNITS = {"pct": "%", "mib": "MiB", "gib": "GiB", "gb": "GB", "mb": "MB", "s": "s", "ms": "ms", "bytes": "bytes",
          "usd": "USD", "idr": "IDR", "points": "points"}
_STATS = {"mean": "mean", "std": "sd", "sd": "sd", "min": "min", "max": "max"}


def readable_name(column: str) -> str:
    """A table column's snake_case name as words with its unit: ``iid_mean_pct`` -> "iid mean (%)",
    ``total_bytes_mean`` -> "total mean (bytes)", ``steps_per_s`` -> "steps/s", ``test_macro_f1_std`` -> "test macro F1 sd"."""
    tokens = column.replace("_per_s", "/s").split("_")
    stat = _STATS.get(tokens[-1].lower()) if len(tokens) > 1 else None
    if stat:
        tokens = tokens[:-1]
    unit = _UNITS.get(tokens[-1].lower()) if len(tokens) > 1 else None
    if unit:
        tokens = tokens[:-1]
    words = " ".join(tokens).replace("f1", "F1")
    return words + (f" {stat}" if stat else "") + (f" ({unit})" if unit else "")


def readable_number(value: Any) -> Any:
    """Numbers as a reader writes them: thousands separators for large ones (19,590,000, not 1.959e+07), four
    significant digits otherwise; anything else unchanged."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or pd.isna(value):
        return value
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with readable column names and numbers, for the headline tables a reader sees first."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_numeric_dtype(out[column]) and not pd.api.types.is_bool_dtype(out[column]):
            out[column] = out[column].map(readable_number)
    return out.rename(columns=readable_name)
