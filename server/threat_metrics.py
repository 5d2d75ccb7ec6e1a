"""Metrics that expose attacks, measured on every global model beside clean and PGD accuracy.

Each entry of `THREAT_METRICS` takes the model, the central evaluation subset, the run config,
the device and the round, and returns its named values, or {} when it does not apply to the run
(another dataset, a feature switched off). They measure; none of them is a defense.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attacks.targeted_poisoning import (
    TargetedPoisoningParams,
    malicious_dataset,
    misclassification,
)
from core.config import RunConfig
from core.data import ImageSet, load_splits
from server.backdoor_metrics import backdoor_metrics, edge_case_metrics

ThreatMetric = Callable[[nn.Module, ImageSet, RunConfig, torch.device, int], dict[str, float]]


def targeted_poisoning_metrics(
    model: nn.Module, data: ImageSet, cfg: RunConfig, device: torch.device, server_round: int
) -> dict[str, float]:
    """FL-WBC's attack metric on D_M (attacks/targeted_poisoning.py): `tp_confidence`, the mean
    probability of the adversarial labels, and `tp_accuracy`. Measured in every run (a handful
    of images): before an attack it is the baseline a mitigated model returns to."""
    splits = load_splits(cfg.data)
    n_images = TargetedPoisoningParams.of(cfg).tp_n_images
    d_m = malicious_dataset(splits.test, n_images, splits.spec.num_classes, cfg.seed)
    m = misclassification(model, d_m, device)
    return {"tp_confidence": m.confidence, "tp_accuracy": m.accuracy}


THREAT_METRICS: tuple[ThreatMetric, ...] = (
    targeted_poisoning_metrics,
    backdoor_metrics,
    edge_case_metrics,
)
