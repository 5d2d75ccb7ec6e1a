"""`logit-scaling`: the global model with its last layer scaled up, the simplest gradient masking.

Scaling the last linear layer by s > 1 keeps every prediction (argmax is scale invariant), so
clean accuracy is unchanged, while the softmax saturates and PGD's cross-entropy gradients
vanish: the model looks as robust as before to a plain PGD check. Its logit differences, and so
its certified loss (CFAT Eq. 3), grow s-fold, which is what the certification gate detects.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.collusion import Coalition
from attacks.registry import register
from core.config_base import param
from core.job import LocalJob, LocalResult
from core.policy_params import PolicyParams


class LogitScalingParams(PolicyParams):
    """`logit-scaling`'s parameter."""

    scale_factor: float = param(
        100.0, "logit-scaling: factor on the last layer's weights and bias", gt=0
    )


def scale_last_layer(model: nn.Module, factor: float) -> nn.Module:
    """Multiply the weight and bias of the model's last nn.Linear by `factor`, in place."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to scale")
    with torch.no_grad():
        last[-1].weight.mul_(factor)
        if last[-1].bias is not None:
            last[-1].bias.mul_(factor)
    return model


@register("logit-scaling", params=(LogitScalingParams,))
def logit_scaling(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Reply with the global model's last layer scaled by `attack.scale-factor`."""
    model = scale_last_layer(job.global_model(), LogitScalingParams.of(job.cfg).scale_factor)
    return job.reply(model)
