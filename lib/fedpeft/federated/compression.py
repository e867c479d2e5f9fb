"""Compressed client updates: what a client sends, quantized, with or without error feedback.

A client's update is its trained state minus the global state it received (the delta). :class:`CompressedUpdates`
wraps any round-loop strategy: each client encodes its delta with a codec and sends that; the server decodes it and
adds it back to the global state it sent, then the wrapped strategy aggregates as usual. With error feedback
(Seide et al., 2014; Karimireddy et al., 2019), a client keeps what quantization dropped and adds it to its next
update, so nothing is lost for good, only delayed. The server's broadcast is not compressed.

Codecs (:data:`CODECS`), each applied per floating tensor; the payload is the bytes a message carries, the
quantization scales included (the ledger serializes it):

``fp32``  no compression: the delta as it is (4 bytes per value).
``fp16``  half precision (2 bytes per value), carried as raw bytes so the wire cannot cast it back.
``int8``  bitsandbytes' blockwise dynamic 8-bit quantization (1 byte per value, one fp32 absmax per block of
          :data:`INT8_BLOCK` values).
``nf4``   bitsandbytes' 4-bit NormalFloat (half a byte per value, one fp32 absmax per block of :data:`NF4_BLOCK`
          values), QLoRA's data type.

Pure functions :func:`encode` / :func:`decode` for one tensor; the strategy keeps the per-client residuals in its
state, so an interrupted run resumes with them. State keys named in ``exact`` (a model's BatchNorm statistics, which
are not gradients) travel in fp32 under every codec.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fedpeft.federated.strategies import FedAvg, StateDict

CODECS = ("fp32", "fp16", "int8", "nf4")
INT8_BLOCK = 256  # values per absmax scale of the 8-bit codec (bitsandbytes' default for quantize_blockwise)
NF4_BLOCK = 64  # values per absmax scale of the 4-bit codec (QLoRA's block size)
_SEP = "::"  # payload keys: "<state key>::<part>"


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"codec = {codec!r} is not allowed; it must be one of {list(CODECS)}")
    return codec


def encode(x: torch.Tensor, codec: str) -> dict[str, torch.Tensor]:
    """The payload of one floating tensor (float32 in): its parts by name ("data", and "absmax" for the quantized
    codecs). Everything is float32 or raw bytes (uint8), so serializing it at fp32 carries it unchanged."""
    check_codec(codec)
    x = x.detach().to(torch.float32).contiguous()
    if codec == "fp32":
        return {"data": x}
    if codec == "fp16":
        return {"data": x.to(torch.float16).reshape(-1).view(torch.uint8)}
    import bitsandbytes.functional as bnb

    if x.numel() == 0:
        return {"data": x}
    if codec == "int8":
        q, state = bnb.quantize_blockwise(x.reshape(-1), blocksize=INT8_BLOCK)
    else:
        q, state = bnb.quantize_4bit(x.reshape(-1), blocksize=NF4_BLOCK, quant_type="nf4")
    return {"data": q.reshape(-1), "absmax": state.absmax.to(torch.float32)}


def decode(payload: Mapping[str, torch.Tensor], codec: str, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`encode` (lossy for every codec but fp32): a float32 tensor of ``shape``."""
    check_codec(codec)
    numel = int(torch.Size(shape).numel())
    data = payload["data"]
    if codec == "fp32" or numel == 0:
        return data.to(torch.float32).reshape(shape)
    if codec == "fp16":
        return data.view(torch.float16).to(torch.float32).reshape(shape)
    import bitsandbytes.functional as bnb
    from bitsandbytes.functional import QuantState

    absmax = payload["absmax"].to(torch.float32)
    if codec == "int8":
        state = QuantState(absmax=absmax, code=bnb.create_dynamic_map().to(torch.float32), blocksize=INT8_BLOCK,
                           dtype=torch.float32)
        return bnb.dequantize_blockwise(data, state).reshape(shape)
    state = QuantState(absmax=absmax, shape=torch.Size([numel]), code=bnb.get_4bit_type("nf4", device="cpu"), blocksize=NF4_BLOCK,
                       quant_type="nf4", dtype=torch.float32)
    return bnb.dequantize_4bit(data.reshape(-1, 1), state).reshape(shape)


def encode_state(delta: Mapping[str, torch.Tensor], codec: str, exact: frozenset[str] = frozenset()) -> StateDict:
    """Every floating tensor of ``delta`` encoded (keys ``<key>::<part>``), those named in ``exact`` in fp32; other
    tensors pass as they are."""
    out: StateDict = {}
    for k, v in delta.items():
        if not v.is_floating_point():
            out[k] = v
            continue
        out |= {f"{k}{_SEP}{part}": t for part, t in encode(v, "fp32" if k in exact else codec).items()}
    return out


def decode_state(payload: Mapping[str, torch.Tensor], codec: str, like: Mapping[str, torch.Tensor],
                 exact: frozenset[str] = frozenset()) -> StateDict:
    """Inverse of :func:`encode_state`, shaped and typed as ``like``."""
    out: StateDict = {}
    for k, ref in like.items():
        if not ref.is_floating_point():
            out[k] = payload[k]
            continue
        parts = {key.split(_SEP, 1)[1]: t for key, t in payload.items() if key.startswith(k + _SEP)}
        if "data" not in parts:
            raise KeyError(f"the compressed update carries no {k!r}")
        out[k] = decode(parts, "fp32" if k in exact else codec, ref.shape).to(ref.dtype)
    return out


class CompressedUpdates(FedAvg):
    """``inner``'s aggregation of client updates that travel compressed with ``codec`` (see the module docstring);
    ``error_feedback``: each client adds what quantization dropped from its last update to its next; ``exact``: state
    keys that travel in fp32 all the same (a model's BatchNorm statistics: a variance quantized in a block with
    larger values can come back negative)."""

    per_client_messages = True

    def __init__(self, inner: FedAvg, codec: str, error_feedback: bool = False, exact: frozenset[str] = frozenset()) -> None:
        if inner.per_client_messages or inner.folds_base_weights:
            raise ValueError(f"codec = {codec!r} cannot wrap {inner.describe()}: it already sends each client its own "
                             "message or folds into the frozen weights")
        self.inner, self.codec, self.error_feedback = inner, check_codec(codec), bool(error_feedback)
        self.exact = frozenset(exact)
        self.name = f"{inner.name}+{codec}"
        self._sent: StateDict = {}  # the global state of this round's broadcast
        self.residuals: dict[int, StateDict] = {}  # error feedback: per client, what quantization dropped

    def client_config(self) -> dict[str, float]:
        return self.inner.client_config()

    def expand_for_model(self, state, generator=None) -> StateDict:
        return self.inner.expand_for_model(state, generator)

    def downlink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        self._sent = {k: v.detach().clone() for k, v in state.items()}
        return dict(state)

    def uplink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """The client's delta from the broadcast (plus its residual, with error feedback), encoded."""
        delta = {k: (v.to(torch.float32) - self._sent[k].to(torch.float32)) if v.is_floating_point() else v
                 for k, v in state.items()}
        if self.error_feedback and client_index in self.residuals:
            delta = {k: v + self.residuals[client_index][k] if v.is_floating_point() else v for k, v in delta.items()}
        payload = encode_state(delta, self.codec, self.exact)
        if self.error_feedback:
            sent = decode_state(payload, self.codec, {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in delta.items()},
                                self.exact)
            self.residuals[client_index] = {k: delta[k] - sent[k] for k in delta if delta[k].is_floating_point()}
        return payload

    def from_uplink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """The client's state as the server reads it: the broadcast plus the decoded delta."""
        delta = decode_state(state, self.codec, {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in self._sent.items()},
                             self.exact)
        return {k: (self._sent[k].to(torch.float32) + delta[k]).to(self._sent[k].dtype) if self._sent[k].is_floating_point()
                else delta[k] for k in self._sent}

    def aggregate(self, global_state, client_states, num_examples, trainable_keys=None) -> StateDict:
        return self.inner.aggregate(global_state, client_states, num_examples, trainable_keys)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "residuals": {i: dict(r) for i, r in self.residuals.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        self.residuals = {int(i): dict(r) for i, r in state.get("residuals", {}).items()}

    def describe(self) -> str:
        exact = f" ({len(self.exact)} state tensors in fp32)" if self.exact else ""
        return f"{self.inner.describe()} with {self.codec} updates{' and error feedback' if self.error_feedback else ''}{exact}"
