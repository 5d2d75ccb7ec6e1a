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
