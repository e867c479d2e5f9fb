"""The findings are sentences chosen by verdicts: they flip with the verdict and carry the row's numbers, and the
README's copy is the one the committed ledgers give."""

from __future__ import annotations

import pandas as pd
import pytest

from fedpeft.core.config import REPO_ROOT
from fedpeft.reporting import findings


def _ledger(folder, experiment: str, key: str, verdict: str, study: str, estimate: float, target: float) -> None:
    (folder / experiment).mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"claim": "c", "seed": "7.40 - 7.71 = -0.31 GB", "study": study, "verdict": verdict, "rule": "r",
                   "evidence": "e", "note": "", "kind": "seed claim", "evidence_profile": "paper", "device": "NVIDIA H100",
                   "key": key, "estimate": estimate, "target": target}]).to_csv(folder / experiment / "claims.csv", index=False)


@pytest.mark.parametrize("verdict, estimate, words", [
    ("holds", -0.31, "QLoRA saves Gemma-2-2B the GPU memory its seed reported"),
    ("does not hold", -3.1, "save Gemma-2-2B more GPU memory than its seed reported"),
    ("does not hold", 0.5, "QLoRA saves Gemma-2-2B less GPU memory than its seed reported"),
    ("inconclusive", -0.5, "is undecided"),
])
def test_a_finding_follows_its_verdict_and_carries_its_numbers(tmp_path, verdict, estimate, words):
    _ledger(tmp_path, "lora_vs_qlora", "gpu_memory_768", verdict, f"{estimate:+.3f} GB, one run's difference in [...]", estimate, -0.31)
    text = findings.findings_markdown("local", tmp_path)
    assert words in text and f"{estimate:+.3f} GB" in text and "(7.40 - 7.71 = -0.31 GB)" in text
    assert "Evidence: paper, NVIDIA H100" in text and "(lora_vs_qlora/report.md)" in text


def test_no_ledger_no_finding(tmp_path):
    assert "No findings yet" in findings.findings_markdown("local", tmp_path)
    _ledger(tmp_path, "lora_vs_qlora", "another_key", "holds", "1 x", 1.0, 1.0)
    assert "No findings yet" in findings.findings_markdown("local", tmp_path)


def _without(text: str, names: tuple[str, ...]) -> str:
    for name in names:
        text = text.replace(name, "")
    return text


def test_every_finding_names_a_row_its_experiment_writes():
    # the local ledgers, or an experiment's embedded one while its local runs are not all in (its keys are the same)
    ledgers = {p.parent.name: pd.read_csv(p, keep_default_na=False) for profile in ("embedded", "local")
               for p in (REPO_ROOT / "reports" / profile).glob("*/claims.csv")}
    for spec in findings.FINDINGS:
        assert spec.key in set(ledgers[spec.experiment]["key"]), f"{spec.experiment} writes no row with key {spec.key!r}"
        names = ("SD 1.5", "Gemma-2-2B", "SST-2", "4-bit", "NF4", "INT8", "F1")
        bare = [t for t in spec.sentences.values() if any(ch.isdigit() for ch in _without(t, names))]
        assert not bare, f"{spec.key}: a finding's sentence must take its numbers from the ledger: {bare}"


def test_the_readme_shows_the_findings_of_the_committed_ledgers():
    readme = (REPO_ROOT / "README.md").read_text()
    assert findings.readme_block("local") in readme, "README.md's findings are stale: run python -m fedpeft.reporting.findings --readme"
