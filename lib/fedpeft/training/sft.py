"""Supervised fine-tuning (SFT) of a causal LM on rendered instruction pairs, LoRA or QLoRA, with timing.

The seed used trl's ``SFTTrainer``: batch 1 with gradient accumulation 8, AdamW at lr 2e-4, a cosine schedule with
3 % warm-up (transformers' ``get_cosine_schedule_with_warmup``), loss on every token of the rendered text. This
loop does the same so that each optimizer step can be timed on its own: a *step* is one optimizer update
(``grad_accum`` examples); steps/s counts updates per second of wall time.
Also here: the Gemma-2 architectures, 4-bit loading (through :func:`fedpeft.quantization.nf4.from_pretrained_4bit`), and adapter
files written in fp32 and fp16.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedpeft.core import checkpoints
from fedpeft.core.device import synchronize
from fedpeft.training.contract import EvalResult, ExtraLoss, Trainer, TrainStats, check_learning_rate, check_positive_int

#: google/gemma-2-2b's published config.json (architecture only).
GEMMA2_2B = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
    final_logit_softcapping=30.0, attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1,
)
SEED_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def gemma2_2b_config():
    from transformers import Gemma2Config

    return Gemma2Config(**GEMMA2_2B)


def tiny_gemma2(tokenizer):
    """A 2-layer Gemma-2 with the tokenizer's vocabulary (``embedded``)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                          sliding_window=256, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    return Gemma2ForCausalLM(config)


def load_for_arm(source_dir: Path, arm: str, compute_dtype: torch.dtype, base_dtype: torch.dtype, double_quant: bool = True,
                 device: torch.device | str = "cpu"):
    """The base model of ``source_dir`` for one arm on ``device``: ``lora`` in ``base_dtype``; ``qlora`` with NF4 linear
    layers (bitsandbytes through transformers, placed by its ``device_map``) computing in ``compute_dtype``."""
    from transformers import AutoModelForCausalLM

    from fedpeft.quantization.nf4 import from_pretrained_4bit

    device = torch.device(device)
    if arm == "lora":
        return AutoModelForCausalLM.from_pretrained(source_dir, dtype=base_dtype).to(device)
    if arm != "qlora":
        raise ValueError(f"arm = {arm!r} is not allowed; it must be 'lora' or 'qlora'")
    device_map = {"": device.index or 0} if device.type == "cuda" else "cpu"
    return from_pretrained_4bit(AutoModelForCausalLM, source_dir, compute_dtype, double_quant, device_map=device_map)


def save_base(model: nn.Module, tokenizer, folder: Path) -> Path:
    """Save a model built in memory so that both arms load it the same way (written to a temporary folder first)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


@dataclass
class SFTTrainer(Trainer):
    """``steps`` optimizer updates of ``grad_accum`` examples each (batch 1, as the seed), examples drawn in an order
    shuffled from the generator's seed; AdamW (no weight decay) with a cosine schedule after ``warmup_ratio`` of
    warm-up. The model stays where its loader put it (a 4-bit model is placed by bitsandbytes), and its batches go
    there too. ``records`` keeps one row per update of the last ``train`` call: mean loss and wall seconds.
    ``checkpoint_path``: written every ``checkpoint_every_s`` seconds of training (adapter, optimizer, schedule, draw
    order, random states); a ``train`` call that finds it resumes after its step, with the same result as without the
    interruption (the resumed steps' rows keep the seconds measured when they ran)."""

    steps: int
    grad_accum: int
    lr: float
    warmup_ratio: float = 0.03
    autocast_dtype: torch.dtype | None = None
    records: list[dict[str, float]] = field(default_factory=list, repr=False, compare=False)
    checkpoint_path: Path | None = field(default=None, repr=False, compare=False)
    checkpoint_every_s: float = field(default=60.0, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int(self, "steps", "grad_accum")
        check_learning_rate(self.lr)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio = {self.warmup_ratio!r} is not allowed; it must be in [0, 1)")

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train(self, model: nn.Module, data: list[torch.Tensor], generator: torch.Generator,
              extra_loss: ExtraLoss | None = None, client_id: str = "all") -> TrainStats:
        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if not data:
            raise ValueError(f"client {client_id}: cannot train on an empty data set")
        self.torch_device = device = next(p for p in model.parameters()).device
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(self.warmup_ratio * self.steps), self.steps)
        rng = np.random.default_rng(generator.initial_seed())
        stateful = {"optimizer": optimizer, "scheduler": scheduler}
        done, extra = checkpoints.resume_steps(self.checkpoint_path, model, stateful)
        order: list[int] = list(extra.get("order", []))
        if done:
            rng.bit_generator.state = extra["draws"]
        model.train()
        self.records = list(extra.get("records", []))
        start_all = saved_at = time.perf_counter()
        for step in range(done + 1, self.steps + 1):
            start = time.perf_counter()
            total = 0.0
            for _ in range(self.grad_accum):
                if not order:
                    order = rng.permutation(len(data)).tolist()
                ids = data[order.pop()].unsqueeze(0).to(device)
                with self._autocast(device):
                    loss = model(input_ids=ids, labels=ids).loss
                term = extra_loss(model) if extra_loss is not None else None
                ((loss if term is None else loss + term) / self.grad_accum).backward()
                total += float(loss.detach())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            self.records.append({"step": step, "loss": total / self.grad_accum, "seconds": time.perf_counter() - start})
            if self.checkpoint_path is not None and step < self.steps and time.perf_counter() - saved_at >= self.checkpoint_every_s:
                checkpoints.save_steps(self.checkpoint_path, model, step, stateful,
                                       {"order": order, "draws": rng.bit_generator.state, "records": self.records})
                saved_at = time.perf_counter()
        mean_loss = float(np.mean([r["loss"] for r in self.records]))
        return TrainStats(loss=mean_loss, examples=self.steps * self.grad_accum, seconds=time.perf_counter() - start_all)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: list[torch.Tensor]) -> EvalResult:
        """Token-weighted mean loss (nats per predicted token) over ``data`` and its perplexity."""
        start = time.perf_counter()
        device = next(p for p in model.parameters()).device
        model.eval()
        loss_sum, tokens = 0.0, 0
        for ids in data:
            if len(ids) < 2:
                continue
            with self._autocast(device):
                loss = model(input_ids=ids.unsqueeze(0).to(device), labels=ids.unsqueeze(0).to(device)).loss
            loss_sum += float(loss.float()) * (len(ids) - 1)
            tokens += len(ids) - 1
        loss = loss_sum / tokens
        return EvalResult(loss=loss, metrics={"perplexity": math.exp(loss)}, examples=len(data), seconds=time.perf_counter() - start)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def save_adapter_copy(model: nn.Module, folder: Path, dtype: torch.dtype) -> int:
    """Save the model's LoRA adapter with peft, its tensors cast to ``dtype``; return the safetensors file's bytes."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].save_pretrained(folder)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in adapter_state(model).items()}
    path = folder / "adapter_model.safetensors"
    save_file(state, path)
    return path.stat().st_size


def load_adapter_copy(model: nn.Module, folder: Path) -> None:
    """Load an adapter saved by :func:`save_adapter_copy` into a peft model of the same configuration (its
    tensors are cast to the model's own dtype)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(Path(folder) / "adapter_model.safetensors")
    own = adapter_state(model)
    set_peft_model_state_dict(model, {k: v.to(own[k].dtype) for k, v in state.items()})


def adapter_file_bytes(shapes: dict[str, torch.Size], dtype: torch.dtype) -> int:
    """Exact size of a safetensors file holding tensors of ``shapes`` in ``dtype`` (serialized for real)."""
    from safetensors.torch import save

    return len(save({k: torch.zeros(s, dtype=dtype) for k, s in shapes.items()}))
