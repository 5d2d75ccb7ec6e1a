"""Madry PGD adversarial training as the run config asks: what every benign client does, and
what the malicious policies that must look benign (or start from benign training) reuse."""

from __future__ import annotations

import torch
from torch import nn

from core.config import TrainConfig
from core.evasion import PGDConfig, pgd
from core.job import LocalJob, sgd_config
from core.training import AfterStep, Perturb, train


def madry_perturb(t: TrainConfig, generator: torch.Generator) -> Perturb | None:
    """The batch perturbation of Madry training when `train.mode = pgd`, else None (plain SGD)."""
    if t.mode != "pgd":
        return None
    attack = PGDConfig(
        eps=t.adv_eps,
        steps=t.adv_steps,
        step_size=t.adv_step_size,
        random_start=t.adv_random_start,
    )
    return lambda model, x, y: pgd(model, x, y, attack, generator)


def benign_train(job: LocalJob, model: nn.Module, after_step: AfterStep | None = None) -> float:
    """Train `model` in place on the job's partition as a benign client; mean training loss.
    `after_step` runs after every optimiser step (a client-side defense such as FL-WBC)."""
    t = job.cfg.train
    stats = train(
        model,
        job.data,
        sgd_config(t),
        job.generator("shuffle"),
        perturb=madry_perturb(t, job.generator("pgd")),
        after_step=after_step,
        device=job.device,
    )
    return stats.mean_loss
