"""Dry run of the ``paper`` profile's federated architectures at full size (a measurement, not a test).

Builds each paper architecture from its published config with random weights (nothing is downloaded), puts the
paper profile's LoRA settings (params/paper.yaml) on it, and runs one federated round (2 clients, FedAvg on the adapters, a few tiny batches each)
through the study's own loop and trainers on ``--device`` (``auto``: CUDA when present). Reports parameters,
bytes per message, the round's wall time, the seconds per local step and the peak memory (CPU RSS growth or
CUDA max-allocated, labelled). It proves the paper profile's code path runs at full size before a GPU is spent
on it. Writes ``reports/paper/dry_run.md``.

    .venv/bin/python benchmarks/paper_dry_run.py [--device auto]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from fedpeft.core.config import REPO_ROOT
from fedpeft.core.device import resolve_device
from fedpeft.core.profiling import machine_description, measure
from fedpeft.data.code_corpus import TokenBlocks
from fedpeft.data.glue import TokenizedText
from fedpeft.experiments.code_lm_fedprox import settings as code_exp
from fedpeft.experiments.glue_lora_aggregation import settings as glue_exp
from fedpeft.federated.ledger import MIB, serialize_state
from fedpeft.federated.loop import Client, RoundConfig, run_federated
from fedpeft.federated.strategies import FedAvg
from fedpeft.models.causal_lm import opt_350m_config
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora
from fedpeft.reporting.outputs import MarkdownReport, package_versions
from fedpeft.training.causal_lm import CausalLMTrainer
from fedpeft.training.text import TextClassifierTrainer

SEQ = 64  # tokens per example: small, so the round measures the model's cost, not the data's


def roberta_base_case(device: str):
    """RoBERTa-base (the GLUE seed's model) with the paper profile's LoRA, SST-2-shaped examples."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    p = glue_exp.load("paper").params
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                                           pad_token_id=1, num_labels=2))
    model = attach_lora(model, p["lora_rank"], p["lora_alpha"], p["lora_dropout"], p["target_modules"], seed=0)
    g = torch.Generator().manual_seed(0)

    def data(n):
        ids = torch.randint(3, 50265, (n, SEQ), generator=g)
        return TokenizedText(ids, torch.ones_like(ids), torch.randint(0, 2, (n,), generator=g))

    clients = [Client(f"c{i}", data(8)) for i in range(2)]
    trainer = TextClassifierTrainer("sst2", lr=p["learning_rate"], batch_size=4, epochs=1, device=device)
    return f"{p['model']} + LoRA r {p['lora_rank']} (GLUE seed)", model, clients, trainer, data(8), 2


def opt_350m_case(device: str):
    """OPT-350m (the code seed's model) with the paper profile's LoRA, packed token blocks."""
    from transformers import AutoModelForCausalLM

    p = code_exp.load("paper").params
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(opt_350m_config())
    model = attach_lora(model, p["lora_rank"], p["lora_alpha"], p["lora_dropout"], p["target_modules"], seed=0,
                        task_type="CAUSAL_LM")
    g = torch.Generator().manual_seed(0)
    clients = [Client(f"c{i}", TokenBlocks(torch.randint(3, 50272, (4, SEQ), generator=g), [])) for i in range(2)]
    trainer = CausalLMTrainer(lr=p["learning_rate"], batch_size=p["batch_size"], epochs=1, device=device)
    return f"{p['model']} + LoRA r {p['lora_rank']} (code seed)", model, clients, trainer, TokenBlocks(torch.randint(3, 50272, (4, SEQ), generator=g), []), 2


def run_case(builder, device: str) -> dict:
    name, model, clients, trainer, test, steps_per_client = builder(device)
    trainable = count_parameters(model, trainable_only=True)
    adapter = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    with measure(trainer.torch_device) as m:
        result = run_federated(model, clients, FedAvg(), trainer, RoundConfig(num_rounds=1, exchange="trainable",
                               evaluate_clients=False), server_test=test, progress=False)
    last = result.history.iloc[-1]
    return {"model": name, "device": str(trainer.torch_device), "parameters": count_parameters(model),
            "trainable": trainable, "message_MiB": len(serialize_state(adapter)) / MIB,
            "round_wall_s": m.wall_s, "s_per_local_step": float(last["train_s"]) / (steps_per_client * len(clients)),
            "server_loss": float(last["server_loss"]), "peak_memory_MiB": m.peak_memory_mib, "memory_kind": m.memory_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    rows = [run_case(b, device) for b in (roberta_base_case, opt_350m_case)]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    report = MarkdownReport("Paper profile: dry run at full size")
    report.text(__doc__.split("\n\n")[1])
    report.table(table, f"One federated round (2 clients, FedAvg on the adapters, {SEQ}-token examples), random weights")
    report.text("Not in this round: Gemma-2-2B (QLoRA) and the SD 1.5 UNet, which are not federated in the seeds; their "
                "full-size memory and speed on a GPU are measured by benchmarks/paper_lora_vs_qlora_gpu.py, and their "
                "parameter counts and NF4 bytes are computed on the meta device in notebook 03.")
    report.table(pd.DataFrame([machine_description()]), "Machine")
    report.table(package_versions(("torch", "transformers", "peft")), "Versions")
    report.write(REPO_ROOT / "reports" / "paper" / "dry_run.md")


if __name__ == "__main__":
    main()
