"""Randomness derived from tuples of integers, so that every batch order and initialisation is reproducible and
independent of execution order (a resumed run draws exactly what an uninterrupted one would)."""

from __future__ import annotations

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """A 63-bit seed derived from a tuple of integers, stable across runs and machines."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] % (2**63))


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU torch generator seeded from a tuple of integers (e.g. run seed, round, client), stable across runs."""
    return torch.Generator().manual_seed(derived_seed(*keys))


def seed_global_rng(*keys: int) -> None:
    """Seed torch's global generators (CPU and CUDA) from a tuple of integers; layers that draw from them
    (dropout) then repeat exactly in a resumed run. Uses another stream than :func:`seeded_generator` of the
    same keys."""
    torch.manual_seed(derived_seed(*keys, 1))
