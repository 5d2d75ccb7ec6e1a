"""Derived seeds: one run seed fans out into independent, reproducible streams."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed determined by `parts` (e.g. run seed, round, partition id)."""
    entropy = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def torch_generator(*parts: int | str) -> torch.Generator:
    """A CPU torch.Generator seeded by `derive_seed(*parts)`."""
    return torch.Generator().manual_seed(derive_seed(*parts))
