"""Soundness: no concrete output of the region escapes the bounds, and PGD breaks no certificate."""

from __future__ import annotations

import torch
from certify_helpers import architectures, pgd_extremes, region_points
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certify import certified_margins, certify_dataset, linf_region, output_bounds
from core.evasion import PGDConfig, pgd
from core.models import InputSpec, build_model

TOL = 1e-9  # float64 analysis and float64 network: only rounding separates them


def _inputs(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    x = torch.rand(
        (batch, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    x[0].fill_(0.0)  # a point on the box's corner: every pixel's range is clipped
    return x


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    net=architectures(),
    eps=st.sampled_from([0.0, 0.01, 0.05, 0.2]),
    seed=st.integers(0, 1000),
    method=st.sampled_from(["zonotope", "interval"]),
)
def test_every_concrete_output_lies_within_the_bounds(net, eps, seed, method) -> None:
    model, shape = net
    x = _inputs(shape, 3, seed)
    lo, hi = output_bounds(model, x, eps, method)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    assert (lo <= hi + TOL).all()
    region = linf_region(x, eps)
    points = region_points(*region, 1500, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outs = model(points.flatten(0, 1)).view(1500, *lo.shape)
    assert (outs >= lo - TOL).all() and (outs <= hi + TOL).all()
    extremes = pgd_extremes(model, *region, steps=50)
    assert (extremes >= lo - TOL).all() and (extremes <= hi + TOL).all()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=architectures(), eps=st.sampled_from([0.02, 0.1]), seed=st.integers(0, 1000))
def test_margins_bound_every_concrete_logit_difference(net, eps, seed) -> None:
    model, shape = net
    x = _inputs(shape, 3, seed)
    y = torch.tensor([0, 1, 2])
    margins = certified_margins(model, x, y, eps)
    points = region_points(*linf_region(x, eps), 1000, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(points.flatten(0, 1)).view(1000, 3, -1)
    diff = out - out.gather(2, y.view(1, 3, 1).expand(1000, 3, 1))
    own = torch.isinf(margins)  # q = y: z_y - z_y = 0 is no competitor
    assert (diff <= margins.masked_fill(own, 0.0) + TOL).all()


def test_no_certified_point_is_broken_by_pgd() -> None:
    """sound_fp: the certificates hold for the float32 network PGD attacks, with no tolerance."""
    spec = InputSpec(1, 28, 28, 10, (0.1307,), (0.3081,))
    model = build_model("conv-small", spec, seed=3).eval()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right, so certificates are possible
    for eps in (0.002, 0.01):
        result = certify_dataset(model, x, y, eps, sound_fp=True)
        assert 0 < int(result.certified.sum()) < len(y) or eps == 0.002
        cfg = PGDConfig(eps=eps, steps=50, restarts=3)
        adv = pgd(model, x, y, cfg, torch.Generator().manual_seed(1))
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        assert not (fooled & result.certified).any()
        assert ((adv - x).abs() <= eps + 1e-6).all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    net=architectures(),
    eps=st.sampled_from([0.02, 0.05, 0.1]),
    seed=st.integers(0, 1000),
    method=st.sampled_from(["zonotope", "interval"]),
    sound_fp=st.booleans(),
)
def test_pgd_breaks_no_certified_point_of_random_networks(net, eps, seed, method, sound_fp):
    model, shape = net
    x = _inputs(shape, 8, seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    result = certify_dataset(model, x, y, eps, method, sound_fp=sound_fp)
    # Without sound_fp a margin within float64 rounding of 0 proves nothing about argmax.
    certified = result.certified if sound_fp else result.worst_margin < -1e-9
    cfg = PGDConfig(eps=eps, steps=50, restarts=3)
    adv = pgd(model, x, y, cfg, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    assert not (fooled & certified).any()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=architectures(), eps=st.sampled_from([0.01, 0.1]), seed=st.integers(0, 1000))
def test_sound_fp_bounds_hold_for_the_float32_network(net, eps, seed) -> None:
    """In sound_fp mode the bounds must hold for the network as float32 computes it, exactly."""
    model, shape = net
    model = model.float()
    x = _inputs(shape, 3, seed).float()
    for method in ("zonotope", "interval"):
        lo, hi = output_bounds(model, x, eps, method, sound_fp=True)
        assert lo.dtype == torch.float64
        points = region_points(*linf_region(x, eps), 1000, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            outs = model(points.flatten(0, 1)).view(1000, *lo.shape).double()
        assert (outs >= lo).all() and (outs <= hi).all()


def test_sound_fp_costs_little_precision() -> None:
    """The a-priori rounding bound moves conv-small's margins by well under 1%."""
    spec = InputSpec(1, 28, 28, 10, (0.1307,), (0.3081,))
    model = build_model("conv-small", spec, seed=0).eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4)
    plain = certified_margins(model.double(), x.double(), y, 0.05)
    sound = certified_margins(model.float(), x, y, 0.05, sound_fp=True)
    finite = torch.isfinite(plain)
    assert sound.dtype == torch.float64
    assert ((sound - plain)[finite].abs() <= 1e-2 * (1 + plain[finite].abs())).all()
