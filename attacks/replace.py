"""`replace`: model replacement with boosting (Bagdasaryan et al. 2020; ARU Sec. 4.1, Eq. 3-5).

Every colluder of the round sends gamma/N * (R - G) + G for one shared target R (the leader
computes it, `Coalition.from_leader`), so that a mean of the K replies becomes R when the benign
updates are near zero. For this plain policy R is what Bagdasaryan et al.'s attacker installs,
its own locally trained model, here trained without adversarial training: the global model
fine-tuned by plain SGD (`train.*` optimiser settings) on the leader's partition. Replacing
with it drops Madry training for a round; `aru` and `aru-extract` install non-robust models.
"""

from __future__ import annotations

import torch

from attacks.boosting import BoostParams, boost, boost_factor
from attacks.collusion import Coalition
from attacks.registry import register
from attacks.updates import global_vector, model_vector, reply_with_update
from core.job import LocalJob, LocalResult, sgd_config
from core.training import train


def plain_sgd_target(job: LocalJob) -> torch.Tensor:
    """R of the plain policy: the global model after local plain SGD (no PGD), flat."""
    model = job.global_model()
    train(model, job.data, sgd_config(job.cfg.train), job.generator("replace"), device=job.device)
    return model_vector(job, model)


def replacement_reply(job: LocalJob, coalition: Coalition, target: torch.Tensor) -> LocalResult:
    """ARU Eq. 5 with gamma/N: reply G + gamma/N * (R - G) for the flat target R."""
    global_flat = global_vector(job)
    boosted = boost(target, global_flat, boost_factor(job.cfg, coalition))
    return reply_with_update(job, boosted - global_flat)


@register("replace", coalition=True, params=(BoostParams,))
def replace(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Replace the global model by the leader's plain-SGD model, boosted and shared."""
    target = coalition.from_leader("replace-target", lambda: plain_sgd_target(job))
    return replacement_reply(job, coalition, target)
