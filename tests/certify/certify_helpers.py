"""Random small networks and concrete probes of an input region, shared by the certify tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from certify import linf_region
from core.models import Normalize

NUM_CLASSES = 3


def _randomize(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random weights and (for BatchNorm) random running statistics, so no layer is trivial."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.6)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


@st.composite
def architectures(
    draw: st.DrawFn, max_convs: int = 2, nonlinear: bool = True
) -> tuple[nn.Module, tuple[int, int, int]]:
    """A random small certifiable network (float64, eval mode) and its input shape; with
    `nonlinear=False` an affine one (no ReLU, no max pooling)."""
    channels, size = draw(st.integers(1, 2)), draw(st.integers(4, 8))
    shape = (channels, size, size)
    layers: list[nn.Module] = []
    if draw(st.booleans()):
        layers.append(Normalize([0.3] * channels, [0.5 + 0.2 * i for i in range(channels)]))
    c, h = channels, size
    for _ in range(draw(st.integers(0, max_convs))):
        k = draw(st.integers(1, min(3, h)))
        stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, 1))
        out = draw(st.integers(1, 4))
        layers.append(nn.Conv2d(c, out, k, stride, pad, bias=draw(st.booleans())))
        c, h = out, (h + 2 * pad - k) // stride + 1
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(c))
        if nonlinear:
            layers.append(nn.ReLU())
        pools = ["none", "avg", "max", "max-overlap"] if nonlinear else ["none", "avg"]
        pool = draw(st.sampled_from(pools))
        if pool != "none" and h >= 2:
            if pool == "avg":
                layers.append(nn.AvgPool2d(2))
            elif pool == "max":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(nn.MaxPool2d(2, stride=1, padding=1 if h >= 3 else 0))
            h = (h + 2 * layers[-1].padding - 2) // layers[-1].stride + 1
    layers.append(nn.Flatten())
    width = c * h * h
    for _ in range(draw(st.integers(1, 2))):
        hidden = draw(st.integers(2, 8))
        layers += [nn.Linear(width, hidden), nn.ReLU() if nonlinear else nn.Identity()]
        if draw(st.booleans()):
            layers.insert(-1, nn.BatchNorm1d(hidden))
        width = hidden
    layers.append(nn.Linear(width, NUM_CLASSES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    model = _randomize(nn.Sequential(*layers).double(), gen).eval()
    return model, shape


def region_points(lo: torch.Tensor, hi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """`(n, *lo.shape)` points of the box: half uniform inside, half random vertices."""
    u = torch.rand((n, *lo.shape), generator=gen, dtype=lo.dtype)
    u[n // 2 :] = (u[n // 2 :] > 0.5).to(lo.dtype)
    return lo + u * (hi - lo)


def pgd_extremes(
    model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, steps: int = 50
) -> torch.Tensor:
    """Outputs at points found by signed-gradient ascent on +-z_k for every output k.

    Returns `(2 * K, B, K)`: row 2k maximises z_k, row 2k + 1 minimises it, per sample.
    """
    k = model(lo[:1]).shape[1]
    signs = torch.eye(k, dtype=lo.dtype).repeat_interleave(2, 0)
    signs[1::2] *= -1  # (2K, K)
    x = ((lo + hi) / 2).expand(2 * k, *lo.shape).clone()
    step = (hi - lo) / 8
    for _ in range(steps):
        x.requires_grad_(True)
        out = model(x.flatten(0, 1)).view(2 * k, lo.shape[0], k)
        (grad,) = torch.autograd.grad((out * signs[:, None, :]).sum(), x)
        x = torch.min(torch.max(x.detach() + step * grad.sign(), lo), hi)
    with torch.no_grad():
        return model(x.flatten(0, 1)).view(2 * k, lo.shape[0], k)


def exact_affine_bounds(
    model: nn.Module, x: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of an affine network over the box: f(c) +- |J| r, with J from the Jacobian."""
    lo, hi = linf_region(x, eps)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    out = []
    for ci, ri in zip(c, r, strict=True):
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], ci)
        rad = (jac.abs() * ri).flatten(1).sum(1)
        with torch.no_grad():
            f = model(ci[None])[0]
        out.append((f - rad, f + rad))
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
