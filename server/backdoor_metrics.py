"""Backdoor metrics of the global model (threat metrics, see server/threat_metrics.py).

`backdoor_success`: the share of evaluation points not of `attack.backdoor-target` that the model
assigns to it once the stripe trigger of attacks/backdoor.py is stamped on (CFAT Sec. 5).
`edge_case_acc`: the share of the held-out edge-case images (ARDIS test '7's on MNIST, Southwest
test planes on CIFAR-10) assigned to the attacker's label (Attack of the Tails' target accuracy).
Both are one forward pass and measured in every run where they can be, so that a clean run gives
the baseline; the edge-case one is skipped when the files are absent, unless the run's policy is
`edge-case`, which then fails naming the missing path.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.backdoor import BackdoorParams, stripe_trigger, trigger_success
from attacks.edge_case_data import load_edge_case
from core.config import RunConfig
from core.data import DataNotFoundError, ImageSet, load_splits
from core.training import evaluate


def backdoor_metrics(
    model: nn.Module, data: ImageSet, cfg: RunConfig, device: torch.device, server_round: int
) -> dict[str, float]:
    """`backdoor_success` of the stripe trigger on the evaluation subset `data`."""
    params = BackdoorParams.of(cfg)
    trigger = stripe_trigger(load_splits(cfg.data).spec, params.trigger_magnitude)
    rate = trigger_success(
        model, data, trigger, params.backdoor_target, cfg.eval.batch_size, device
    )
    return {"backdoor_success": rate}


def edge_case_metrics(
    model: nn.Module, data: ImageSet, cfg: RunConfig, device: torch.device, server_round: int
) -> dict[str, float]:
    """`edge_case_acc` on the edge-case test images; {} when the dataset has none on disk."""
    try:
        edge = load_edge_case(cfg.data)
    except DataNotFoundError:
        if cfg.roles.attack == "edge-case":
            raise
        return {}
    result = evaluate(model, edge.test, cfg.eval.batch_size, device=device)
    return {"edge_case_acc": result.accuracy}
