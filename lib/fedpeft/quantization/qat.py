"""Quantization-aware training (QAT) with the same int8 scheme as the study's static post-training quantization.

:func:`prepare_qat` turns a float model into a :class:`QATModel`: torchao's pt2e QAT graph, in which the convolutions
and Linear layers see their weights and inputs fake-quantized to int8 in every forward pass (straight-through
gradients), BatchNorm is simulated folded into the convolutions, and observers track the activation ranges. It trains
like any module: ``.train()`` switches the graph's BatchNorm to batch statistics and lets the observers learn the
ranges, ``.eval()`` uses the running statistics and freezes the ranges (an evaluation never moves them), and both
survive ``copy.deepcopy`` (the round loop trains a copy). Its ``state_dict`` is plain tensors, so the round loop
averages it as any model's: the fake-quantization scales and observer ranges are averaged with the weights.
:func:`convert_qat` gives the int8 model (:func:`fedpeft.quantization.ptq.converted_int8`, as ``int8_static`` does
after calibration), so a QAT model and a post-training quantized one differ only in how their int8 weights and
ranges were found.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from fedpeft.quantization.ptq import QuantizedModel, converted_int8, export_for_quantization, x86_int8_quantizer


class QATModel(nn.Module):
    """A pt2e QAT graph (``graph``) with the train / eval switch of an ordinary module (see the module docstring)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> "QATModel":
        # an exported graph refuses nn.Module.train; torchao rewrites its BatchNorm nodes instead
        from torchao.quantization.pt2e import (
            disable_observer,
            enable_observer,
            move_exported_model_to_eval,
            move_exported_model_to_train,
        )

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.graph.apply(enable_observer if mode else disable_observer)
        self.training = mode
        return self


def prepare_qat(model: nn.Module, example: torch.Tensor) -> QATModel:
    """A QAT copy of ``model`` (left untouched), in eval mode, its observers initialised by one forward pass of
    ``example`` (a batch of normalized float inputs) with BatchNorm on its running statistics: every
    fake-quantization buffer then has its final shape, so client states can be averaged from the first round, and no
    BatchNorm statistic moves."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    float_model = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)
    device = next(float_model.parameters()).device
    example = example.float().contiguous().to(device)
    exported = export_for_quantization(float_model.train(), example)
    with warnings.catch_warnings():
        # the quantizer leaves max-pool inputs it does not quantize in float and says so for each (as for int8_static)
        warnings.filterwarnings("ignore", message=r"The input of maxpool2d is not quantized", category=UserWarning)
        graph = prepare_qat_pt2e(exported, x86_int8_quantizer(qat=True))
    move_exported_model_to_eval(graph)
    with torch.no_grad():
        graph(example)
    return QATModel(graph).eval()


def convert_qat(model: QATModel) -> QuantizedModel:
    """The int8 model of a trained QAT model (a copy of its graph is converted; ``model`` is left as it is)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval

    graph = copy.deepcopy(model.graph)
    move_exported_model_to_eval(graph)
    return converted_int8(graph, "int8_qat")
