"""`certification_metrics` on a network whose zonotope bounds are known by hand: the identity
map, where the worst margin of a point x with label y at radius eps is
hi(x_q) - lo(x_y), the interval [lo, hi] = [x - eps, x + eps] clipped to [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import nn

from certify.metrics import certification_metrics


def test_certified_accuracy_and_loss_match_the_hand_computed_margins() -> None:
    model = nn.Sequential(nn.Linear(2, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    x = torch.tensor([[0.9, 0.1], [0.2, 0.7]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    metrics = certification_metrics(model, x, y, (0.05, 0.45))
    assert set(metrics) == {"cert_acc@0.05", "cert_loss@0.05", "cert_acc@0.45", "cert_loss@0.45"}
    # eps 0.05: margins 0.15 - 0.85 and 0.25 - 0.65, both negative: certified, no loss
    assert metrics["cert_acc@0.05"] == 1.0 and metrics["cert_loss@0.05"] == 0.0
    # eps 0.45: margins 0.55 - 0.45 = 0.1 and 0.65 - 0.25 = 0.4: neither certified
    assert metrics["cert_acc@0.45"] == 0.0
    assert math.isclose(metrics["cert_loss@0.45"], (0.1 + 0.4) / 2, rel_tol=1e-9)


def _sized(monkeypatch, budget_points: float, cpu_min: int) -> tuple[int, list[tuple[int, float]]]:
    """chunk_size on a small MLP with a budget of `budget_points` worst-case points, and the
    dry runs it made (points, eps); the dry runs are real, only recorded."""
    import certify.metrics as metrics

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    steps = metrics.trace(model)
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    worst = metrics.bytes_per_sample(steps, x[:1], 1.0, "zonotope")
    runs: list[tuple[int, float]] = []
    real = metrics.bytes_per_sample

    def recorded(steps, x, eps, method, sound_fp=False):  # noqa: ANN001, ANN202
        runs.append((x.shape[0], eps))
        return real(steps, x, eps, method, sound_fp)

    monkeypatch.setattr(metrics, "bytes_per_sample", recorded)
    budget = int(budget_points * worst)
    chunk = metrics.chunk_size(steps, x, 0.05, "zonotope", budget, cpu_bytes=2**30, cpu_min=cpu_min)
    return chunk, runs


def test_a_budget_that_decides_alone_skips_the_typical_dry_run(monkeypatch) -> None:  # noqa: ANN001
    chunk, runs = _sized(monkeypatch, budget_points=3.5, cpu_min=4)
    assert chunk == 3
    assert runs == [(1, 1.0)]  # only the worst case: 3 points are within cpu_min anyway
    chunk, runs = _sized(monkeypatch, budget_points=0.5, cpu_min=1)
    assert chunk == 1 and runs == [(1, 1.0)]  # a point larger than the budget: one at a time


def test_the_typical_dry_run_stays_within_the_budget(monkeypatch) -> None:  # noqa: ANN001
    chunk, runs = _sized(monkeypatch, budget_points=5.5, cpu_min=1)
    assert runs == [(1, 1.0), (5, 0.05)]  # 5 points, not 8: the budget's worst case
    assert chunk == 5  # the typical case fits the (large) CPU budget: the budget decides
    chunk, runs = _sized(monkeypatch, budget_points=100, cpu_min=1)
    assert runs == [(1, 1.0), (8, 0.05)] and chunk == 100
