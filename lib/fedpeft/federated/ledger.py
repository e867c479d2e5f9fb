"""Communication accounting from the bytes of real serialized messages.

Every message the round loop exchanges (the global state down to a client, the client's state up to the
server) is serialized with safetensors, a real wire format, and the ledger records ``len(payload)``. Sizes are
reported in bytes and MiB (2**20 bytes); the seeds' "MB" are MiB (1,738,408 B = 1.66 "MB").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

MIB = 2**20
TRANSPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def serialize_state(state: Mapping[str, torch.Tensor], transport: str = "fp32") -> bytes:
    """Serialize a state dict for the wire; floating tensors are cast to the ``transport`` precision."""
    if transport not in TRANSPORT_DTYPES:
        raise ValueError(f"transport = {transport!r} is not allowed; it must be one of {sorted(TRANSPORT_DTYPES)}")
    dtype = TRANSPORT_DTYPES[transport]
    wire = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in state.items()
    }
    return st_save(wire)


def deserialize_state(payload: bytes, like: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`serialize_state`; with ``like``, floating tensors are cast back to its dtypes."""
    state = st_load(payload)
    if like is not None:
        state = {k: state[k].to(like[k].dtype) for k in like}
    return state


@dataclass
class CommunicationLedger:
    """Bytes of every message, one row per (round, client, direction)."""

    rows: list[dict] = field(default_factory=list)

    def record(self, round_: int, client: str, direction: str, num_bytes: int, payload: str = "model") -> None:
        if direction not in ("down", "up"):
            raise ValueError(f"direction = {direction!r} is not allowed; it must be 'down' or 'up'")
        self.rows.append(
            {"round": int(round_), "client": str(client), "direction": direction, "payload": payload, "bytes": int(num_bytes)}
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["round", "client", "direction", "payload", "bytes"])

    def per_round(self) -> pd.DataFrame:
        """Bytes down, up and in total per round, with the cumulative total."""
        df = self.frame()
        if df.empty:
            return pd.DataFrame(columns=["round", "down", "up", "total", "cumulative"])
        wide = df.pivot_table(index="round", columns="direction", values="bytes", aggfunc="sum", fill_value=0)
        wide = wide.reindex(columns=["down", "up"], fill_value=0)
        wide["total"] = wide["down"] + wide["up"]
        wide["cumulative"] = wide["total"].cumsum()
        return wide.reset_index().rename_axis(columns=None)

    def total_bytes(self) -> int:
        return int(sum(r["bytes"] for r in self.rows))

    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    @classmethod
    def from_state_dict(cls, state: Mapping) -> "CommunicationLedger":
        return cls(rows=list(state.get("rows", [])))


def cost(num_bytes: float, price_per_mib: float) -> float:
    """Transfer cost for ``num_bytes`` at ``price_per_mib`` currency units per MiB."""
    if price_per_mib < 0:
        raise ValueError(f"price_per_mib = {price_per_mib!r} is not allowed; it must be >= 0")
    return num_bytes / MIB * price_per_mib
