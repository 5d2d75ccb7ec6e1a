"""Which tightness and monotonicity properties hold, tested as theorems or as fixed examples.

Theorems tested over random networks: on affine networks the zonotope is exact (hence inside
the interval); the interval domain is inclusion-monotone in eps. Facts that do NOT hold and are
pinned by counterexamples: DeepZono is not always tighter than IBP per neuron (its ReLU lower
bound is lam * l < 0 where IBP has 0), and it is not inclusion-monotone in eps (a wider input
interval changes the ReLU slope). What holds for it instead: soundness, so the bounds at a
larger eps contain every concrete output of a smaller one.
"""

from __future__ import annotations

import torch
from certify_helpers import architectures, exact_affine_bounds, region_points
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from certify import (
    Zonotope,
    certified_margins,
    certify_dataset,
    linf_region,
    output_bounds,
    trace,
)
from certify.blocks import Patches
from core.models import InputSpec, build_model

TOL = 1e-9
MNIST = InputSpec(1, 28, 28, 10, (0.1307,), (0.3081,))
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    net=architectures(nonlinear=False), eps=st.sampled_from([0.01, 0.3]), seed=st.integers(0, 99)
)
def test_zonotope_is_exact_on_affine_networks_hence_inside_the_interval(net, eps, seed) -> None:
    model, shape = net
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    zlo, zhi = output_bounds(model, x, eps, "zonotope")
    elo, ehi = exact_affine_bounds(model, x, eps)
    assert torch.allclose(zlo, elo, atol=1e-9) and torch.allclose(zhi, ehi, atol=1e-9)
    ilo, ihi = output_bounds(model, x, eps, "interval")
    assert (ilo <= zlo + TOL).all() and (zhi <= ihi + TOL).all()


@SETTINGS
@given(net=architectures(), seed=st.integers(0, 99))
def test_patches_and_dense_generators_give_the_same_bounds(net, seed) -> None:
    """The window-local fast path agrees with plain batched convolutions over all generators."""
    model, shape = net
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lo, hi = linf_region(x, 0.1)
    fast = Zonotope.from_box(lo, hi)
    dense = Zonotope(fast.center, (Patches.diagonal((hi - lo) / 2).dense(),))
    for step in trace(model):
        fast = step.transformer.apply(step.module, fast)
        dense = step.transformer.apply(step.module, dense)
    for a, b in zip(fast.bounds(), dense.bounds(), strict=True):
        assert torch.allclose(a, b, atol=1e-9)


@SETTINGS
@given(net=architectures(), seed=st.integers(0, 99))
def test_interval_bounds_are_nested_in_eps(net, seed) -> None:
    model, shape = net
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    small, large = (
        output_bounds(model, x, 0.02, "interval"),
        output_bounds(model, x, 0.1, "interval"),
    )
    assert (large[0] <= small[0] + TOL).all() and (small[1] <= large[1] + TOL).all()


@SETTINGS
@given(net=architectures(), seed=st.integers(0, 99))
def test_zonotope_bounds_at_a_larger_eps_hold_every_output_of_a_smaller_one(net, seed) -> None:
    model, shape = net
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lo, hi = output_bounds(model, x, 0.1, "zonotope")
    points = region_points(*linf_region(x, 0.02), 500, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(points.flatten(0, 1)).view(500, *lo.shape)
    assert (out >= lo - TOL).all() and (out <= hi + TOL).all()
    slo, shi = output_bounds(model, x, 0.02, "zonotope")
    assert (slo <= hi + TOL).all() and (lo <= shi + TOL).all()  # they always intersect


def _net(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers).double().eval()


def _linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_zonotope_is_not_always_tighter_than_interval_per_neuron() -> None:
    """relu(2x - 1) on x in [0, 1]: IBP gives [0, 1]; DeepZono's [lam l, u] = [-0.5, 1]."""
    model = _net(_linear([[2.0]], [-1.0]), nn.ReLU())
    x = torch.tensor([[0.5]], dtype=torch.float64)
    zlo, zhi = output_bounds(model, x, 0.5, "zonotope")
    ilo, ihi = output_bounds(model, x, 0.5, "interval")
    assert torch.allclose(zlo, torch.tensor([[-0.5]], dtype=torch.float64))
    assert torch.allclose(ilo, torch.zeros(1, 1, dtype=torch.float64))
    assert torch.allclose(zhi, ihi)


def test_zonotope_is_not_inclusion_monotone_in_eps() -> None:
    """x = 1 clipped to [0, 1]: z = 8x - 7 spans [-1, 1] at eps 0.25 and [-3, 1] at eps 0.5.
    The output -relu(z) + (relu(z + 100) - 100) / 4 has DeepZono upper bound 0.25 at the
    smaller eps but 0 at the larger one, because the ReLU slope changes from 1/2 to 1/4."""
    model = _net(_linear([[8.0], [8.0]], [-7.0, 93.0]), nn.ReLU(), _linear([[-1.0, 0.25]], [-25.0]))
    x = torch.ones(1, 1, dtype=torch.float64)
    _, small_hi = output_bounds(model, x, 0.25, "zonotope")
    _, large_hi = output_bounds(model, x, 0.5, "zonotope")
    assert torch.allclose(small_hi, torch.tensor([[0.25]], dtype=torch.float64))
    assert torch.allclose(large_hi, torch.tensor([[0.0]], dtype=torch.float64))


def test_zonotope_margins_are_tighter_than_interval_on_conv_small() -> None:
    """A fixed example (conv-small, seed 0) of the usual case: DeepZono far tighter than IBP."""
    model = build_model("conv-small", MNIST, seed=0).double().eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(8)
    for eps in (0.01, 0.05):
        z = certified_margins(model, x, y, eps, "zonotope")
        i = certified_margins(model, x, y, eps, "interval")
        finite = torch.isfinite(z)
        assert (z[finite] < i[finite]).all()


def test_gradient_masking_scale_blows_up_the_certified_loss() -> None:
    """Scaling the last layer by 100 leaves PGD's view unchanged but scales the loss by 100."""
    model = build_model("conv-small", MNIST, seed=0).eval()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    base = certify_dataset(model, x, y, 0.05)
    with torch.no_grad():
        model[-1].weight.mul_(100)
        model[-1].bias.mul_(100)
    masked = certify_dataset(model, x, y, 0.05)
    assert float(base.certified_loss) > 0
    ratio = float(masked.certified_loss) / float(base.certified_loss)
    assert 99 < ratio < 101
    assert torch.equal(base.certified, masked.certified)
