"""Post-training quantization of a trained float model, and the real size of what would be saved or sent.

Methods:

- ``fp32``: the model as trained.
- ``fp16``: ``model.half()``; fed fp16 inputs (the seed's FP16 arm).
- ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic(model, {Linear, Conv2d}, qint8)``, exactly the
  seed's call. PyTorch has no dynamic int8 Conv2d, so the convolutions silently stay fp32; ``int8_fraction``
  exposes that.
- ``int8_static``: pt2e static quantization with torchao's ``X86InductorQuantizer`` (per-channel int8 weights,
  int8 activations calibrated on training batches, BatchNorm folded into the convolutions). Convolutions and
  Linear layers are both int8.

Sizes are the bytes of the file ``torch.save`` writes for the tensors the quantized model actually uses.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

PTQ_METHODS = ("fp32", "fp16", "int8_dynamic", "int8_static")


@dataclass
class QuantizedModel:
    method: str
    module: nn.Module
    saved: dict  # exactly what a deployment saves and sends (its file size is measured)
    input_dtype: torch.dtype | None = None  # e.g. fp16 inputs for the fp16 model
    notes: list[str] = field(default_factory=list)
    weights: dict | None = None  # plain-tensor view of ``saved`` (packed int8 weights unpacked), if different

    def size_bytes(self) -> int:
        return saved_size_bytes(self.saved)

    def int8_fraction(self) -> float:
        """Share of the weight elements (tensors with >1 dimension) that are stored as 8-bit integers."""
        view = self.weights if self.weights is not None else self.saved
        weights = [v for v in view.values() if isinstance(v, torch.Tensor) and v.dim() > 1]
        total = sum(v.numel() for v in weights)
        int8 = sum(v.numel() for v in weights if v.dtype in (torch.int8, torch.qint8, torch.uint8, torch.quint8))
        return int8 / total if total else 0.0


def saved_size_bytes(tensors: dict) -> int:
    """Bytes of the file that ``torch.save(tensors)`` writes (measured, not computed)."""
    fd, path = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        torch.save(tensors, path)
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def _unpacked_weights(module: nn.Module) -> dict:
    # Dynamic-quantized Linear weights are packed inside the state_dict; unpack them so int8_fraction sees them.
    view = {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    for name, mod in module.named_modules():
        if hasattr(mod, "_packed_params") and hasattr(mod, "weight"):
            view[f"{name}.weight"] = mod.weight()
    return view


def quantize(model: nn.Module, method: str, calibration: Iterable[torch.Tensor] | None = None) -> QuantizedModel:
    """Quantize a copy of ``model`` (left untouched) with ``method``; ``calibration`` batches (normalized float
    inputs) are needed by ``int8_static``."""
    if method not in PTQ_METHODS:
        raise ValueError(f"quantization method = {method!r} is not known; allowed: {list(PTQ_METHODS)}")
    float_model = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    if method == "fp32":
        return QuantizedModel(method, float_model, float_model.state_dict())
    if method == "fp16":
        half = float_model.half()
        return QuantizedModel(method, half, half.state_dict(), input_dtype=torch.float16)
    if method == "int8_dynamic":
        with warnings.catch_warnings():
            # torch 2.14 deprecates torch.ao's eager quantization (and its quantized-tensor constructors) for torchao's;
            # it is still the seed's quantize_dynamic in the pinned torch, and its numbers are what the report measures
            warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized",
                                    category=UserWarning)
            qmodel = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear, nn.Conv2d}, dtype=torch.qint8)
        float_convs = [n for n, m in qmodel.named_modules() if isinstance(m, nn.Conv2d)]
        notes = [f"convolutions left in fp32 by quantize_dynamic: {float_convs}"] if float_convs else []
        # what the seed saved: the state_dict, packed int8 Linear weights included
        return QuantizedModel(method, qmodel, qmodel.state_dict(), notes=notes, weights=_unpacked_weights(qmodel))
    return _static_int8(float_model, calibration)


def _static_int8(float_model: nn.Module, calibration: Iterable[torch.Tensor] | None) -> QuantizedModel:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    batches = list(calibration or [])
    if not batches:
        raise ValueError("int8_static needs calibration batches (a few batches of normalized training inputs)")
    exported = export_for_quantization(float_model, batches[0])
    with warnings.catch_warnings():
        # the quantizer leaves a max-pool whose input it does not quantize in float, and says so for each; the note
        # below and the int8 fraction of the saved weights report what was quantized
        warnings.filterwarnings("ignore", message=r"The input of maxpool2d is not quantized", category=UserWarning)
        prepared = prepare_pt2e(exported, x86_int8_quantizer(qat=False))
    with torch.no_grad():
        for x in batches:
            prepared(x)
    return converted_int8(prepared, "int8_static")


def x86_int8_quantizer(qat: bool):
    """The study's one int8 scheme (torchao's ``X86InductorQuantizer``: per-channel symmetric int8 weights, uint8
    activations), for post-training calibration (``qat=False``) or quantization-aware training (fake quantization
    in the forward pass, ``qat=True``)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=qat))
    return quantizer


def export_for_quantization(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` as the exported graph pt2e quantization works on (any batch size)."""
    return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)).module()


def converted_int8(prepared: nn.Module, method: str) -> QuantizedModel:
    """The int8 model of a pt2e-prepared graph (observers calibrated, or fake-quantized weights trained), and exactly
    the tensors it uses (what a deployment saves and sends)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # so evaluation code may call .eval() as on any model
    used = {n.target for n in converted.graph.nodes if n.op == "get_attr"}
    saved = {k: v for k, v in converted.state_dict().items() if k in used}
    return QuantizedModel(method, converted, saved, notes=["pt2e X86InductorQuantizer; BatchNorm folded"])
