"""The torch device a run asks for."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` (an error if none is visible) or `auto` (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run config key 'device' = 'cuda' but torch sees no CUDA device")
    return torch.device(name)
