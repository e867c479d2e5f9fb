"""The study's findings in one screen: a handful of sentences, each chosen by one verdict of an experiment's
ledger (``claims.csv``) and carrying that row's measured numbers, interval and evidence. The README, the site's
front page and the paper's abstract all print :func:`findings_markdown` (or :func:`findings`), so a finding changes
when its verdict or its numbers do; ``tests/test_findings.py`` fails when the README's copy is stale.

    python -m fedpeft.reporting.findings --profile local            # print the findings
    python -m fedpeft.reporting.findings --profile local --readme   # rewrite the README's block
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd

from fedpeft.core.config import REPO_ROOT
from fedpeft.reporting.claims import evidence_source

README_START, README_END = "<!-- findings:start -->", "<!-- findings:end -->"
#: The experiment that answers the study's question across techniques: the paper and the site open with its frontier.
ANSWER_EXPERIMENT = "savings_frontier"


@dataclass(frozen=True)
class FindingSpec:
    """One finding: the ledger row it rests on (experiment, key) and a sentence per verdict. A "does not hold" may
    be split by where the estimate lies against the seed's figure or threshold ("does not hold/above", ".../below").
    Sentences may use ``{study}`` (the measured text, unit and interval included) and ``{seed}`` (the seed's figure);
    they hold no number of their own."""

    experiment: str
    key: str
    sentences: Mapping[str, str]


FINDINGS: tuple[FindingSpec, ...] = (
    FindingSpec("savings_frontier", "cost:LoRA naive", {
        "holds": "**Sending LoRA adapters instead of the full model saves traffic at no real cost in accuracy**: {study} "
                 "(against full-model FedAvg, paired by seed).",
        "does not hold": "**Sending LoRA adapters instead of the full model saves traffic but costs accuracy**: {study} "
                         "(against full-model FedAvg, paired by seed).",
        "inconclusive": "**Sending LoRA adapters instead of the full model saves traffic; whether it costs accuracy is "
                        "undecided**: {study} (against full-model FedAvg, paired by seed)."}),
    FindingSpec("savings_frontier", "cost:LoRA naive nf4 + EF", {
        "holds": "**4-bit NF4 updates with error feedback on top of LoRA save still more, at no real cost in accuracy**: "
                 "{study} (against full-model FedAvg, paired by seed).",
        "does not hold": "**4-bit NF4 updates with error feedback on top of LoRA cost accuracy**: {study} (against "
                         "full-model FedAvg, paired by seed).",
        "inconclusive": "**Whether 4-bit NF4 updates with error feedback on top of LoRA cost accuracy is undecided**: "
                        "{study} (against full-model FedAvg, paired by seed)."}),
    FindingSpec("savings_frontier", "cost:LoRA naive DiLoCo H=2", {
        "holds": "**Synchronizing LoRA half as often (DiLoCo, the same local epochs) saves still more, at no real cost in "
                 "accuracy**: {study} (against full-model FedAvg, paired by seed).",
        "does not hold": "**Synchronizing LoRA half as often (DiLoCo, the same local epochs) costs accuracy**: {study} "
                         "(against full-model FedAvg, paired by seed).",
        "inconclusive": "**Whether synchronizing LoRA half as often (DiLoCo, the same local epochs) costs accuracy is "
                        "undecided**: {study} (against full-model FedAvg, paired by seed)."}),
    FindingSpec("savings_frontier", "cost:CNN full model nf4 + EF", {
        "holds": "**On the EuroSAT CNN, 4-bit NF4 updates of the full model with error feedback save traffic at no real "
                 "cost in accuracy**: {study} (against the CNN's full-precision updates every round, paired by seed).",
        "does not hold": "**On the EuroSAT CNN, 4-bit NF4 updates of the full model with error feedback cost accuracy**: "
                         "{study} (against the CNN's full-precision updates every round, paired by seed).",
        "inconclusive": "**Whether 4-bit NF4 updates of the full model with error feedback cost the EuroSAT CNN accuracy "
                        "is undecided**: {study} (against the CNN's full-precision updates every round, paired by seed)."}),
    FindingSpec("eurosat_fedavg_ptq", "ptq_below_qat", {
        "holds": "**Post-training INT8 is slightly less accurate than quantization-aware training, as the EuroSAT seed "
                 "expects**: {study} (PTQ - QAT, paired by seed).",
        "does not hold/above": "**Quantization-aware training does not beat post-training INT8 on the EuroSAT CNN, "
                               "against its seed's expectation**: {study} (PTQ - QAT, paired by seed).",
        "does not hold/below": "**Quantization-aware training beats post-training INT8 on the EuroSAT CNN by more than "
                               "its seed's 'slightly'**: {study} (PTQ - QAT, paired by seed).",
        "inconclusive": "**Whether post-training INT8 is slightly less accurate than quantization-aware training on the "
                        "EuroSAT CNN is undecided**: {study} (PTQ - QAT, paired by seed)."}),
    FindingSpec("lora_vs_qlora", "gpu_memory_768", {
        "holds": "**QLoRA saves Gemma-2-2B the GPU memory its seed reported** ({seed}): {study}.",
        "does not hold/below": "**QLoRA's 4-bit weights save Gemma-2-2B more GPU memory than its seed reported** "
                               "({seed}): {study}.",
        "does not hold/above": "**QLoRA saves Gemma-2-2B less GPU memory than its seed reported** ({seed}): {study}.",
        "inconclusive": "**Whether QLoRA saves Gemma-2-2B the memory its seed reported is undecided** ({seed}): {study}."}),
    FindingSpec("lora_vs_qlora", "gpu_unet_memory", {
        "holds": "**On the SD 1.5 UNet, QLoRA's fixed overhead outweighs its 4-bit saving, as its seed says** ({seed}): "
                 "{study}.",
        "does not hold/below": "**On the SD 1.5 UNet, the QLoRA overhead its seed reported does not appear** ({seed}): "
                               "{study}.",
        "does not hold/above": "**On the SD 1.5 UNet, QLoRA costs even more memory than its seed reported** ({seed}): {study}.",
        "inconclusive": "**QLoRA's memory on the SD 1.5 UNet is undecided against its seed** ({seed}): {study}."}),
    FindingSpec("weeds_qlora_federated", "fedavg_beats_centralized", {
        "holds": "**Federated QLoRA (FedAvg) beats centralized training on field images, as its seed says**: {study} "
                 "(test macro F1, paired by fold).",
        "does not hold": "**Federated QLoRA (FedAvg) does worse than centralized training on field images**, against "
                         "its seed: {study} (test macro F1, paired by fold).",
        "inconclusive": "**Federated QLoRA (FedAvg) does not beat centralized training on field images**, its seed's main "
                        "claim: {study} (test macro F1, paired by fold; the interval covers zero)."}),
    FindingSpec("weeds_qlora_federated", "diloco_near_fedavg", {
        "holds": "**DiLoCo reaches near-FedAvg quality with fewer syncs, as its seed says** (the seed: {seed}): {study} "
                 "(DiLoCo - FedAvg test macro F1, paired by fold, above the rule's margin).",
        "does not hold": "**DiLoCo falls short of FedAvg's quality** (the seed: {seed}): {study} (paired by fold).",
        "inconclusive": "**Whether DiLoCo reaches near-FedAvg quality is undecided** (the seed: {seed}): {study} (paired by "
                        "fold)."}),
    FindingSpec("eurosat_fedavg_ptq", "int8_dynamic_drop", {
        "holds": "**Post-training INT8 costs the EuroSAT CNN the accuracy its seed reported** ({seed}): {study}.",
        "does not hold/above": "**Post-training INT8 (quantize_dynamic) does not cost the EuroSAT CNN the accuracy its "
                               "seed reported** ({seed}): {study}.",
        "does not hold/below": "**Post-training INT8 costs the EuroSAT CNN more accuracy than its seed reported** "
                               "({seed}): {study}.",
        "inconclusive": "**INT8's cost in accuracy is undecided against the seed's** ({seed}): {study}."}),
    FindingSpec("code_lm_fedprox", "prox_vs_avg", {
        "holds": "**FedProx ends at a lower held-out loss than FedAvg on the code language model**: {study} (paired by "
                 "seed).",
        "does not hold": "**FedProx ends at a higher held-out loss than FedAvg on the code language model**, a baseline "
                         "its seed never ran: {study} (paired by seed).",
        "inconclusive": "**FedProx and FedAvg end at held-out losses that cannot be told apart**: {study} (paired by "
                        "seed)."}),
    FindingSpec("code_lm_fedprox", "traffic", {
        "holds": "**LoRA halves the messages of federated fine-tuning, as its seed says**: {study} of the full model's.",
        "does not hold/below": "**LoRA cuts the messages of federated fine-tuning below the seed's 'half'**: {study} "
                               "of the full model's.",
        "does not hold/above": "**LoRA's messages are more than half the full model's**: {study}."}),
    FindingSpec("glue_lora_aggregation", "svd_better", {
        "holds": "**On SST-2, SVD aggregation of LoRA updates trains a better global model than naive A/B averaging**: "
                 "{study} (paired by seed).",
        "does not hold": "**On SST-2, naive A/B averaging trains a better global model than SVD aggregation**: {study} "
                         "(paired by seed).",
        "inconclusive": "**On SST-2, SVD aggregation and naive A/B averaging give global models that cannot be told "
                        "apart**: {study} (paired by seed)."}),
)


def _sentence(spec: FindingSpec, row: pd.Series) -> str:
    verdict = row["verdict"]
    side = ""
    if verdict == "does not hold":
        est, target = pd.to_numeric(row.get("estimate"), errors="coerce"), pd.to_numeric(row.get("target"), errors="coerce")
        if not (math.isnan(est) or math.isnan(target)):
            side = "/above" if est > target else "/below"
    template = spec.sentences.get(verdict + side, spec.sentences.get(verdict, ""))
    return template.format(study=row["study"], seed=row["seed"]) if template else ""


def findings(reports_dir: Path) -> list[tuple[FindingSpec, pd.Series, str]]:
    """Each finding whose experiment has a ledger under ``reports_dir`` with the finding's row and a sentence for its
    verdict: (spec, the ledger row, the sentence)."""
    out = []
    for spec in FINDINGS:
        csv = Path(reports_dir) / spec.experiment / "claims.csv"
        if not csv.is_file():
            continue
        ledger = pd.read_csv(csv, keep_default_na=False)
        rows = ledger[ledger.get("key", pd.Series("", index=ledger.index)) == spec.key]
        if len(rows):
            text = _sentence(spec, rows.iloc[0])
            if text:
                out.append((spec, rows.iloc[0], text))
    return out


def findings_markdown(profile: str, reports_dir: Path | None = None, link_prefix: str = "") -> str:
    """The findings as a markdown list, each with the profile and device of its evidence and a link to its report
    (``link_prefix`` + ``<experiment>/report.md``)."""
    reports_dir = Path(reports_dir) if reports_dir is not None else REPO_ROOT / "reports" / profile
    items = []
    for spec, row, text in findings(reports_dir):
        items.append(f"- {text} *Evidence: {evidence_source(row)}; [{spec.experiment}]({link_prefix}{spec.experiment}/report.md).*")
    if not items:
        return f"No findings yet in the `{profile}` profile: run its pipeline first (`make repro PROFILE={profile}`).\n"
    return "\n".join(items) + "\n"


def compute_sentence(profile: str, reports_dir: Path | None = None) -> str:
    """How long the profile's run stages took, on what, summed from their records (the reports' ``compute.csv``)."""
    from fedpeft.reporting.summary import compute_per_experiment

    reports_dir = Path(reports_dir) if reports_dir is not None else REPO_ROOT / "reports" / profile
    total = compute_per_experiment(reports_dir).set_index("experiment")
    if "all" not in total.index:
        return ""
    row = total.loc["all"]
    return (f"The `{profile}` profile's {int(row['run_stages'])} run stages took {row['wall_h']:.1f} h, on "
            f"{row['devices']} (summed from their records).\n")


def readme_block(profile: str = "local") -> str:
    return (f"{README_START}\n{findings_markdown(profile, link_prefix=f'reports/{profile}/')}\n{compute_sentence(profile)}"
            f"{README_END}")


def update_readme(readme: Path = REPO_ROOT / "README.md", profile: str = "local") -> bool:
    """Rewrite the README's findings block from the committed ledgers; True when it changed."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no findings block ({README_START} ... {README_END})")
    new = pattern.sub(lambda _: readme_block(profile), text)
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="local")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's findings block")
    args = parser.parse_args(argv)
    if args.readme:
        print("README.md " + ("updated" if update_readme(profile=args.profile) else "unchanged"))
    else:
        print(findings_markdown(args.profile), end="")


if __name__ == "__main__":
    main()
