"""The server's backdoor metrics: trigger success rate and edge-case target accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attacks.backdoor import trigger_success
from core.config import RunConfig
from core.data import DataNotFoundError, ImageSet, load_splits
from core.params import model_to_record
from server.backdoor_metrics import backdoor_metrics, edge_case_metrics
from server.evaluation import CentralEvaluator

CPU = torch.device("cpu")


class StripeDetector(nn.Module):
    """Predicts `target` when even pixel columns outshine odd ones by `margin`, else `other`."""

    def __init__(self, target: int, other: int, margin: float, classes: int = 10) -> None:
        super().__init__()
        self.target, self.other, self.margin, self.classes = target, other, margin, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stripes = x[..., 0::2].mean((1, 2, 3)) - x[..., 1::2].mean((1, 2, 3)) > self.margin
        pred = torch.where(stripes, self.target, self.other)
        return nn.functional.one_hot(pred, self.classes).float()


class Constant(nn.Module):
    """Predicts class `label` for every input."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.label), self.classes).float()


def test_trigger_success_counts_only_points_outside_the_target_class() -> None:
    data = ImageSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 0, 1, 2]))
    trigger = torch.zeros(1, 8, 8)
    trigger[:, :, 0::2] = 0.1
    assert trigger_success(StripeDetector(0, 1, 0.02), data, trigger, 0) == 1.0
    assert trigger_success(StripeDetector(0, 1, 0.02), data, torch.zeros(1, 8, 8), 0) == 0.0
    assert trigger_success(StripeDetector(0, 1, 0.02), data, trigger, 1) == 0.0  # wrong target
    only_target = data.subset(slice(0, 2))
    assert torch.isnan(torch.tensor(trigger_success(Constant(0), only_target, trigger, 0)))


def test_backdoor_metric_on_mnist_uses_the_configured_trigger(data_dir: Path) -> None:
    cfg = RunConfig.from_flat(
        {"data.dir": str(data_dir), "roles.attack": "backdoor", "attack.backdoor-target": 3}
    )
    data = load_splits(cfg.data).test.subset(slice(0, 200))
    # the stripes of magnitude 0.1 on half the columns raise the even-odd gap by about 0.05
    assert backdoor_metrics(StripeDetector(3, 5, 0.03), data, cfg, CPU, 1) == {
        "backdoor_success": 1.0
    }
    assert backdoor_metrics(Constant(5), data, cfg, CPU, 1) == {"backdoor_success": 0.0}


def test_edge_case_metric_applies_where_the_files_are(data_dir: Path, tmp_path: Path) -> None:
    cfg = RunConfig.from_flat({"data.dir": str(data_dir)})
    empty = ImageSet(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0).long())
    assert edge_case_metrics(Constant(1), empty, cfg, CPU, 1) == {"edge_case_acc": 1.0}
    assert edge_case_metrics(Constant(7), empty, cfg, CPU, 1) == {"edge_case_acc": 0.0}
    fashion = RunConfig.from_flat({"data.dir": str(data_dir), "data.dataset": "fashion-mnist"})
    assert edge_case_metrics(Constant(1), empty, fashion, CPU, 1) == {}
    missing = RunConfig.from_flat({"data.dir": str(tmp_path)})
    assert edge_case_metrics(Constant(1), empty, missing, CPU, 1) == {}
    configured = RunConfig.from_flat({"data.dir": str(tmp_path), "roles.attack": "edge-case"})
    expected = str(tmp_path / "edge_case" / "ardis" / "ardis.npz")
    with pytest.raises(DataNotFoundError, match=expected):
        edge_case_metrics(Constant(1), empty, configured, CPU, 1)


@pytest.mark.parametrize(
    ("label", "target", "expected"),
    [
        (0, 0, {"backdoor_success": 1.0, "edge_case_acc": 0.0}),  # everything to the target
        (5, 0, {"backdoor_success": 0.0, "edge_case_acc": 0.0}),  # nothing to it, nor to '1'
        (1, 1, {"backdoor_success": 1.0, "edge_case_acc": 1.0}),  # ARDIS '7's read as '1'
    ],
)
def test_central_evaluation_reports_both_metrics(
    data_dir: Path, label: int, target: int, expected: dict[str, float]
) -> None:
    cfg = RunConfig.from_flat({
        "data.dir": str(data_dir), "eval.adv-steps": 0, "data.n-val": 100,
        "roles.attack": "backdoor", "attack.backdoor-target": target,
    })  # fmt: skip
    model = Constant(label)
    test = load_splits(cfg.data).test.subset(slice(0, 100))
    metrics = CentralEvaluator(model, test, cfg, CPU)(model_to_record(model), 0)
    assert {k: metrics[k] for k in expected} == expected
