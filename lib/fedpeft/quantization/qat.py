"""Quantization-aware training (QAT) with the same int8 scheme as the study's static post-training quantization.

:func:`prepare_qat` turns a float model into torchao's pt2e QAT graph: the convolutions and Linear layers see their
weights and inputs fake-quantized to int8 in every forward pass (straight-through gradients), BatchNorm is simulated
folded into the convolutions, and observers track the activation ranges. It trains like any module (``.train()`` and
``.eval()`` switch the graph's BatchNorm), and its ``state_dict`` is plain tensors, so the round loop averages it as
any model's: the fake-quantization scales and observer ranges are averaged with the weights. :func:`convert_qat`
gives the int8 model (:func:`fedpeft.quantization.ptq.converted_int8`, as ``int8_static`` does after calibration),
so a QAT model and a post-training quantized one differ only in how their int8 weights and ranges were found.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from fedpeft.quantization.ptq import QuantizedModel, converted_int8, export_for_quantization, x86_int8_quantizer


def prepare_qat(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A QAT copy of ``model`` (left untouched), its observers initialised by one forward pass of ``example`` (a batch
    of normalized float inputs) in eval mode: every fake-quantization buffer then has its final shape, so client
    states can be averaged from the first round, and no BatchNorm statistic moves."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    float_model = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)
    example = example.float().contiguous()
    exported = export_for_quantization(float_model.train(), example)
    with warnings.catch_warnings():
        # the quantizer leaves max-pool inputs it does not quantize in float and says so for each (as for int8_static)
        warnings.filterwarnings("ignore", message=r"The input of maxpool2d is not quantized", category=UserWarning)
        prepared = prepare_qat_pt2e(exported, x86_int8_quantizer(qat=True))
    allow_exported_model_train_eval(prepared)  # so the trainer's .train() / .eval() switch BatchNorm as on any model
    prepared.eval()
    with torch.no_grad():
        prepared(example)
    return prepared


def convert_qat(prepared: nn.Module) -> QuantizedModel:
    """The int8 model of a trained QAT graph (a copy is converted; ``prepared`` is left as it is)."""
    return converted_int8(copy.deepcopy(prepared).eval(), "int8_qat")
