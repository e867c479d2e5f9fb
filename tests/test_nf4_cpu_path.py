"""One 4-bit CPU path on every x86-64 CPU (issue 28).

bitsandbytes 0.50 decides at each ``Linear4bit``'s construction whether the CPU has AVX512-BF16
(``has_avx512bf16()``); where it has, an evaluation forward (eval mode, no gradient) repacks the NF4 weight for a
bf16 kernel that needs ``out_features % 32 == 0`` and ``in_features >= 64`` and computes in bf16. These tests force
that decision both ways, on any machine, and evaluate the study's three NF4 models through the study's own code:
the weeds' QLoRA head (``Linear(1280, 3)``: crashed on the bf16 path), the small UNet (crashed) and a 4-bit causal
LM loaded by transformers (ran, but in bf16 on another kernel). Evaluation must compute exactly what a training-mode
forward computes, and exactly the same thing whichever way bitsandbytes decided.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fedpeft.models.head import adapted_head, base_head
from fedpeft.quantization import nf4
from fedpeft.training import diffusion, sft
from fedpeft.training.head import FeatureSet, HeadTrainer

bnb = pytest.importorskip("bitsandbytes")
BITSANDBYTES_DECISION = [pytest.param(True, id="avx512bf16"), pytest.param(False, id="avx2")]


@pytest.fixture(params=BITSANDBYTES_DECISION)
def cpu_has_avx512bf16(request, monkeypatch) -> bool:
    """bitsandbytes' ``has_avx512bf16()`` as ``Linear4bit`` reads it when a layer is built, forced to the parameter."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: request.param)
    return request.param


def _linear4bit_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _weeds_head() -> nn.Module:
    torch.manual_seed(0)
    return adapted_head(base_head(nn.Linear(1280, 3), 0.0), "qlora", 4, 8, 0.0, seed=0)


def test_forcing_the_decision_reaches_bitsandbytes(cpu_has_avx512bf16):
    """The fixture is not a no-op: a layer built without the study's code carries the forced decision."""
    layer = bnb.nn.Linear4bit(64, 32, quant_type="nf4")
    assert layer.support_avx512bf16_for_cpu is cpu_has_avx512bf16


def _train_then_eval(model: nn.Module, forward) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward(model)`` without gradient in training mode (never repacked), then in eval mode: the training-mode
    output comes first, because a repacked weight stays repacked."""
    with torch.no_grad():
        model.train()
        train_out = forward(model)
        model.eval()
        eval_out = forward(model)
    return train_out, eval_out


@pytest.mark.usefixtures("cpu_has_avx512bf16")
def test_weeds_qlora_head_evaluates_as_it_trains():
    head = _weeds_head()
    layers = _linear4bit_layers(head)
    assert len(layers) == 1 and layers[0].out_features == 3
    features = torch.randn(16, 1280, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 3
    train_logits, _ = _train_then_eval(head, lambda m: m(features))
    result = HeadTrainer(local_steps=1, rounds=1, batch_size=4, lr=1e-3).evaluate(head, FeatureSet(features, labels))
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(train_logits, labels)), rel=1e-6)
    _, eval_logits = _train_then_eval(head, lambda m: m(features))
    assert torch.equal(eval_logits, train_logits)
    assert not getattr(layers[0].weight.quant_state, "packing_format_for_cpu", False)


def test_weeds_qlora_head_is_the_same_whatever_bitsandbytes_decided(monkeypatch):
    features = torch.randn(16, 1280, generator=torch.Generator().manual_seed(1))
    logits = {}
    for decision in (True, False):
        monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda d=decision: d)
        head = _weeds_head().eval()
        with torch.inference_mode():
            logits[decision] = head(features)
    assert torch.equal(logits[True], logits[False])


@pytest.mark.parametrize("size", ["tiny", "small"])  # embedded: layers of 32 inputs (crashed); local: all accepted
@pytest.mark.usefixtures("cpu_has_avx512bf16")
def test_unet_nf4_layers_evaluate_as_they_train(size):
    comps = diffusion.build_components(size, seed=0)
    unet = comps.unet
    assert nf4.quantize_linear_layers(unet, torch.float32, double_quant=True) == len(_linear4bit_layers(unet)) > 0
    diffusion.attach_unet_lora(unet, 4, 4)
    text_dim = diffusion.SIZES[size]["text_dim"]
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, text_dim, generator=g)
    train_out, _ = _train_then_eval(unet, lambda m: m(latents, 10, encoder_hidden_states=text).sample)
    trainer = diffusion.DiffusionTrainer(comps.scheduler, steps=1, batch_size=2, lr=1e-4, eval_repeats=1)
    assert torch.isfinite(torch.tensor(trainer.evaluate(unet, diffusion.LatentCaptions(latents, text)).loss))
    _, eval_out = _train_then_eval(unet, lambda m: m(latents, 10, encoder_hidden_states=text).sample)
    assert torch.equal(eval_out, train_out)


@pytest.mark.usefixtures("cpu_has_avx512bf16")
def test_4bit_causal_lm_evaluates_as_it_trains(tmp_path):
    """transformers builds these Linear4bit layers itself, in sizes (64 -> 32/64/128) that the bf16 kernel accepts:
    before the study pinned the path, evaluation ran silently in bf16 on another kernel."""
    from fedpeft.models.causal_lm import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    folder = sft.save_base(sft.tiny_gemma2(tokenizer), tokenizer, tmp_path / "tiny-gemma2")
    model = sft.load_for_arm(folder, "qlora", torch.float32, torch.float32)
    assert len(_linear4bit_layers(model)) == 14
    ids = torch.arange(3, 40).unsqueeze(0)
    train_logits, eval_logits = _train_then_eval(model, lambda m: m(input_ids=ids).logits)
    assert torch.equal(eval_logits, train_logits)


@pytest.mark.usefixtures("cpu_has_avx512bf16")
def test_qlora_training_after_an_evaluation_backpropagates_through_every_nf4_layer(tmp_path):
    """A repacked weight stays repacked: on the bf16 path, training after the first evaluation ran through a kernel
    with no autograd (torch warned "bitsandbytes::gemv_4bit: an autograd kernel was not registered") and the first
    layer's adapter got another gradient. Evaluating first must not change what training computes."""
    from fedpeft.models.causal_lm import byte_level_tokenizer
    from fedpeft.models.text import attach_lora

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    folder = sft.save_base(sft.tiny_gemma2(tokenizer), tokenizer, tmp_path / "tiny-gemma2")
    ids = torch.arange(3, 40).unsqueeze(0)

    def first_adapter_gradient(evaluate_first: bool) -> torch.Tensor:
        model = attach_lora(sft.load_for_arm(folder, "qlora", torch.float32, torch.float32), 4, 8, 0.0, sft.SEED_TARGETS,
                            seed=0, task_type="CAUSAL_LM")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:  # B starts at zero; a non-zero B lets the gradient reach the first layer's A
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape))
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return next(p.grad for n, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_A" in n)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*autograd kernel was not registered.*")
        after_evaluation = first_adapter_gradient(evaluate_first=True)
    assert torch.equal(after_evaluation, first_adapter_gradient(evaluate_first=False))
    assert after_evaluation.abs().sum() > 0
