"""Update clipping and seeded noise on flat parameter vectors: the pieces of the DP baselines
(local and central, FL-WBC Sec. 7.1) and of FL-WBC's Laplace perturbation (Sec. 5.1).

Every draw takes a `torch.Generator`, so a run repeats from its seed (Flower's own DP helpers
draw from numpy's global state). Vectors are float tensors of any shape; rows are dim 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

NoiseKind = Literal["gaussian", "laplace"]


def laplace(
    shape: torch.Size | tuple[int, ...], scale: float, generator: torch.Generator
) -> Tensor:
    """Laplace(0, b = scale) samples (std sqrt(2) * scale) by inverting the CDF of U(-1/2, 1/2).

    >>> round(float(laplace((200_000,), 2.0, torch.Generator().manual_seed(0)).std()), 1)
    2.8
    >>> bool((laplace((3,), 0.0, torch.Generator().manual_seed(0)) == 0).all())
    True
    """
    if scale < 0:
        raise ValueError(f"Laplace scale must be >= 0, got {scale}")
    u = torch.rand(shape, generator=generator) - 0.5
    return -scale * u.sign() * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))


def noise(
    shape: torch.Size | tuple[int, ...], std: float, kind: NoiseKind, generator: torch.Generator
) -> Tensor:
    """Zero-mean noise of standard deviation `std`, Gaussian or Laplace (scale std / sqrt 2)."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if kind == "laplace":
        return laplace(shape, std / math.sqrt(2), generator)
    return torch.randn(shape, generator=generator) * std


def clip_rows(x: Tensor, clip: float) -> Tensor:
    """Scale each row of `x` (or `x` itself if 1-D) to L2 norm at most `clip` (FlatClip).

    >>> clip_rows(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    if clip <= 0:
        raise ValueError(f"clipping norm must be > 0, got {clip}")
    rows = x.reshape(1, -1) if x.dim() == 1 else x.reshape(x.shape[0], -1)
    norms = torch.linalg.vector_norm(rows.double(), dim=1)
    scale = torch.clamp(clip / norms.clamp_min(1e-30), max=1.0).to(x.dtype)
    return (rows * scale[:, None]).reshape(x.shape)


def local_dp(
    update: Tensor, clip: float, noise_multiplier: float, kind: NoiseKind, gen: torch.Generator
) -> Tensor:
    """Local DP (Naseri et al.): the update clipped to norm `clip`, plus noise of std z * clip."""
    clipped = clip_rows(update, clip)
    return clipped + noise(update.shape, noise_multiplier * clip, kind, gen).to(update)


def central_noise_std(clip: float, noise_multiplier: float, num_clients: int) -> float:
    """Central DP noise std on the aggregate of `num_clients` clipped updates: z * clip / K."""
    return noise_multiplier * clip / max(num_clients, 1)
