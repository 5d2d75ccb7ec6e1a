"""Layer coverage: every supported layer exactly where the network is affine, MaxPool soundly,
clear errors for anything else, gradients, chunking and the result's bookkeeping."""

from __future__ import annotations

import pytest
import torch
from certify_helpers import exact_affine_bounds, region_points
from torch import nn

from certify import (
    UnsupportedModuleError,
    Zonotope,
    certified_margins,
    certify_dataset,
    linf_region,
    output_bounds,
    trace,
)
from core.models import InputSpec, Normalize, build_model

MNIST = InputSpec(1, 28, 28, 10, (0.1307,), (0.3081,))


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.1)
    return model.double().eval()


AFFINE_CASES = {
    "conv stride 2 padding 1": [nn.Conv2d(2, 3, 3, stride=2, padding=1)],
    "conv no bias, rectangular": [
        nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0), bias=False)
    ],
    "conv padding same": [nn.Conv2d(2, 2, 3, padding="same")],
    "depthwise conv": [nn.Conv2d(2, 4, 3, groups=2, padding=1)],
    "two convs": [nn.Conv2d(2, 3, 3), nn.Conv2d(3, 2, 2, stride=2, padding=1)],
    "batchnorm2d": [nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)],
    "batchnorm without affine": [nn.BatchNorm2d(2, affine=False), nn.Conv2d(2, 2, 2)],
    "avgpool": [nn.Conv2d(2, 3, 3, padding=1), nn.AvgPool2d(2)],
    "avgpool padded, overlapping": [nn.AvgPool2d(3, stride=2, padding=1), nn.Conv2d(2, 2, 2)],
    "avgpool divisor_override": [nn.AvgPool2d(2, divisor_override=3)],
    "normalize, identity, dropout": [
        Normalize([0.2, 0.4], [0.5, 2.0]),
        nn.Identity(),
        nn.Dropout2d(0.5),
        nn.Conv2d(2, 2, 3),
    ],
    "nested sequential": [nn.Sequential(nn.Conv2d(2, 2, 3), nn.Sequential(nn.BatchNorm2d(2)))],
}


@pytest.mark.parametrize("name", sorted(AFFINE_CASES))
def test_affine_layers_are_exact(name: str) -> None:
    body = AFFINE_CASES[name]
    model = nn.Sequential(*body, nn.Flatten(), nn.LazyLinear(3), nn.Dropout(0.3), nn.Identity())
    model(torch.zeros(1, 2, 7, 7))  # materialise the lazy layer
    model = _randomized(model)
    x = torch.rand(2, 2, 7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for eps in (0.0, 0.05, 0.6):
        lo, hi = output_bounds(model, x, eps)
        elo, ehi = exact_affine_bounds(model, x, eps)
        assert torch.allclose(lo, elo, atol=1e-8) and torch.allclose(hi, ehi, atol=1e-8)


def test_batchnorm1d_is_exact() -> None:
    model = _randomized(nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5)))
    x = torch.rand(3, 2, 2, 2, dtype=torch.float64)
    lo, hi = output_bounds(model, x, 0.1)
    elo, ehi = exact_affine_bounds(model, x, 0.1)
    assert torch.allclose(lo, elo) and torch.allclose(hi, ehi)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=1, padding=1)])
@pytest.mark.parametrize("eps", [0.001, 0.05, 0.5])
def test_maxpool_is_sound(pool: nn.MaxPool2d, eps: float) -> None:
    model = _randomized(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), pool))
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    points = region_points(*linf_region(x, eps), 2000, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(points.flatten(0, 1)).view(2000, *model(x).shape)
    for method in ("zonotope", "interval"):
        lo, hi = output_bounds(model, x, eps, method)
        assert (out >= lo - 1e-9).all() and (out <= hi + 1e-9).all()


def test_maxpool_passes_a_dominating_input_on_exactly() -> None:
    """Window (a, b) with a in [0.5, 1] and b in [0, 0.5]: the output is a itself, still tied
    to a's own symbol (an interval fallback would lose that correlation)."""
    z = Zonotope.from_box(torch.tensor([[[[0.5, 0.0]]]]), torch.tensor([[[[1.0, 0.5]]]]))
    out = z.maxpool((1, 2), (1, 2), (0, 0))
    assert torch.allclose(out.center, torch.tensor([[[[0.75]]]]))
    assert torch.allclose(out.blocks[0].dense().coef.flatten(), torch.tensor([0.25, 0.0]))
    assert float(out.blocks[-1].radius().abs().sum()) == 0.0


def test_maxpool_without_a_dominating_input_becomes_a_fresh_box() -> None:
    z = Zonotope.from_box(torch.tensor([[[[0.2, 0.0]]]]), torch.tensor([[[[1.0, 0.6]]]]))
    out = z.maxpool((1, 2), (1, 2), (0, 0))
    assert float(out.blocks[0].dense().coef.abs().sum()) == 0.0
    lo, hi = out.bounds()
    assert torch.allclose(lo, torch.tensor([[[[0.2]]]])) and torch.allclose(
        hi, torch.tensor([[[[1.0]]]])
    )


def test_unsupported_module_is_named_with_its_position() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()))
    with pytest.raises(UnsupportedModuleError, match=r"#2 at '1\.1' \(Sigmoid"):
        trace(model)
    with pytest.raises(UnsupportedModuleError, match="no abstract transformer"):
        certify_dataset(model, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), 0.1)


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (nn.Conv2d(1, 1, 3, dilation=2), "dilation"),
        (nn.Conv2d(1, 1, 3, padding_mode="reflect"), "padding_mode"),
        (nn.Conv2d(1, 1, 2, padding="same"), "asymmetrically"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.AvgPool2d(2, padding=1, count_include_pad=False), "count_include_pad"),
        (nn.BatchNorm2d(1, track_running_stats=False), "track_running_stats"),
        (nn.Flatten(0), "start_dim"),
        (nn.Tanh(), "no abstract transformer"),
    ],
)
def test_unsupported_settings_fail_at_trace_time(module: nn.Module, reason: str) -> None:
    with pytest.raises(UnsupportedModuleError, match=reason):
        trace(nn.Sequential(nn.Identity(), module))


def test_sequential_subclass_with_its_own_forward_is_refused() -> None:
    class Skip(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + super().forward(x)

    with pytest.raises(UnsupportedModuleError, match="own forward"):
        trace(nn.Sequential(Skip(nn.ReLU())))


@pytest.mark.parametrize("method", ["zonotope", "interval"])
def test_certified_loss_is_differentiable_in_every_parameter(method: str) -> None:
    model = build_model("conv-small", MNIST, seed=0)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    result = certify_dataset(model, x, y, 0.02, method, differentiable=True, budget_bytes=1)
    result.certified_loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_margins_match_finite_differences_in_a_parameter() -> None:
    model = _randomized(nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)))
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.tensor([0, 2])
    weight = model[1].weight

    def loss() -> torch.Tensor:
        m = certified_margins(model, x, y, 0.1)
        return m.masked_fill(torch.isinf(m), 0.0).sum()

    (grad,) = torch.autograd.grad(loss(), weight)
    h = 1e-6
    with torch.no_grad():
        weight[0, 0] += h
        up = loss()
        weight[0, 0] -= 2 * h
        down = loss()
        weight[0, 0] += h
    assert torch.allclose(grad[0, 0], (up - down) / (2 * h), rtol=1e-4, atol=1e-6)


def test_chunking_does_not_change_the_result() -> None:
    model = build_model("conv-small", MNIST, seed=1).eval()
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    y = torch.arange(7)
    seen = []
    small = certify_dataset(model, x, y, 0.03, budget_bytes=1, progress=lambda d, n: seen.append(d))
    large = certify_dataset(model, x, y, 0.03, budget_bytes=2**40)
    assert seen == list(range(1, 8))
    assert torch.allclose(small.margins, large.margins, atol=1e-5)
    assert torch.equal(small.certified, large.certified)


def test_result_bookkeeping() -> None:
    model = build_model("conv-small", MNIST, seed=2).eval()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:3] = (y[:3] + 1) % 10  # three wrong labels: never certified
    r = certify_dataset(model, x, y, 0.001)
    assert torch.equal(r.correct, pred == y)
    assert not r.certified[:3].any()
    assert r.certified[3:].any()
    assert torch.equal(r.certified, r.worst_margin < 0)
    assert r.certified_accuracy == pytest.approx(float((r.certified & r.correct).float().mean()))
    assert float(r.certified_loss) == pytest.approx(float(r.worst_margin.clamp_min(0).mean()))
    assert torch.isinf(r.margins.gather(1, y.view(-1, 1))).all()
    assert r.certified_loss.grad_fn is None  # not differentiable unless asked


def test_mismatched_labels_are_rejected() -> None:
    model = build_model("mlp", MNIST, seed=0)
    with pytest.raises(ValueError, match="labels"):
        certify_dataset(model, torch.rand(3, 1, 28, 28), torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="at least one"):
        certify_dataset(model, torch.rand(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = build_model("conv-small", MNIST, seed=0).eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    y = torch.arange(5)
    cpu = certify_dataset(model, x, y, 0.05)
    gpu = certify_dataset(model.cuda(), x.cuda(), y.cuda(), 0.05)
    assert torch.allclose(cpu.margins, gpu.margins.cpu(), atol=1e-4)
