"""Push an L-inf input region through a traced model: output bounds and certification margins.

The region is the L-inf ball of radius eps around x intersected with the valid input box
(default [0, 1]); a pixel whose range collapses to a point gets an all-zero generator, which is
the same zonotope as none and keeps shapes static for batching. Everything here is a plain torch
computation, differentiable in the model parameters whenever autograd is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from certify.domains import DOMAINS, Domain
from certify.fp import Rounding, executed_roundoff
from certify.trace import Step, trace

Box = tuple[float, float] | None


def linf_region(
    x: torch.Tensor, eps: float, box: Box = (0.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper corners of {x' : |x' - x|_inf <= eps} intersected with the input box."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    lo, hi = x - eps, x + eps
    if box is not None:
        lo, hi = lo.clamp(box[0], box[1]), hi.clamp(box[0], box[1])
    return lo, hi


def _region(
    x: torch.Tensor, eps: float, box: Box, sound_fp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The region's corners; in sound_fp mode computed in float64, so x - eps is not rounded
    inward to the nearest float32 (which could leave float32 points of the ball outside)."""
    return linf_region(x.to(torch.float64) if sound_fp else x, eps, box)


@dataclass(frozen=True)
class Propagated:
    """The abstract output and the peak number of elements held at once (for budgeting)."""

    output: Domain
    peak_numel: int


def _steps(model: nn.Module | Sequence[Step]) -> Sequence[Step]:
    return trace(model) if isinstance(model, nn.Module) else model


def propagate(
    model: nn.Module | Sequence[Step],
    lo: torch.Tensor,
    hi: torch.Tensor,
    method: str = "zonotope",
    sound_fp: bool = False,
    float32_roundoff: float | None = None,
) -> Propagated:
    """Run the domain `method` over the box [lo, hi].

    With `sound_fp` the analysis runs in float64 and every layer's output is widened by the
    rounding error it may carry (fresh symbols, see certify/fp.py), so the result also bounds
    the float32 network as executed; `float32_roundoff` defaults to the device's (TF32 aware).
    """
    try:
        domain = DOMAINS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; known: {sorted(DOMAINS)}") from None
    steps = _steps(model)
    if sound_fp:
        roundoff = float32_roundoff or executed_roundoff(lo.device)
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    state = domain.from_box(lo, hi)
    symbols = lo[0].numel()
    peak = state.numel()
    for step in steps:
        new = step.transformer.apply(step.module, state)
        if sound_fp:
            with torch.no_grad():
                lower, upper = state.bounds()
                mag = torch.maximum(lower.abs(), upper.abs())
                rounding = Rounding(symbols, roundoff)
                err = step.transformer.rounding(step.module, mag, rounding)
            if err is not None:
                new = new.add_box(err.reshape(new.center.shape))
        peak = max(peak, state.numel() + new.numel())
        state = new
        symbols += 2 * state.center[0].numel()
    return Propagated(state, peak)


def output_bounds(
    model: nn.Module | Sequence[Step],
    x: torch.Tensor,
    eps: float,
    method: str = "zonotope",
    sound_fp: bool = False,
    box: Box = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound per-output bounds `(lo, hi)` over the region."""
    return propagate(model, *_region(x, eps, box, sound_fp), method, sound_fp).output.bounds()


def certified_margins(
    model: nn.Module | Sequence[Step],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    method: str = "zonotope",
    sound_fp: bool = False,
    box: Box = (0.0, 1.0),
) -> torch.Tensor:
    """`(B, C)` upper bounds of z_q - z_y over the region (CFAT Eq. 1, 3); -inf at q = y.

    Computed on the difference zonotope for all classes at once, so shared generators cancel.
    A sample is certified when every entry is < 0.
    """
    y = y.to(x.device).long()
    region = _region(x, eps, box, sound_fp)
    upper = propagate(model, *region, method, sound_fp).output.margin_upper(y)
    own = torch.zeros_like(upper, dtype=torch.bool).scatter(1, y.view(-1, 1), True)
    return upper.masked_fill(own, float("-inf"))
