"""The benign role: local SGD or Madry PGD adversarial training from the global model, and the
reply of every honest client (local DP when `dp.mode = local`)."""

from __future__ import annotations

import os

import torch
from torch import nn

from core.adversarial_training import benign_train
from core.job import LocalJob, LocalResult
from core.privacy import local_dp


def limit_threads() -> None:
    """Honour CERTFL_TORCH_THREADS (set by `certfl launch`, where many nodes share the cores)."""
    threads = os.environ.get("CERTFL_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def benign_update(job: LocalJob) -> LocalResult:
    """Train a copy of the global model benignly and reply with it."""
    model = job.global_model()
    loss = benign_train(job, model)
    return honest_reply(job, model, **{"train-loss": loss})


def honest_reply(job: LocalJob, model: nn.Module, **metrics: float) -> LocalResult:
    """The reply of an honest client: with `dp.mode = local` its update (floating state minus
    the global model's) is clipped and noised first (core/privacy.py); attack replies are not.
    Not Flower's LocalDpMod: a mod wraps every reply of the ClientApp, attackers' included, is
    built before the run config is known, and draws unseeded noise."""
    dp = job.cfg.dp
    if dp.mode == "local":
        start = job.global_model().state_dict()
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        update = torch.cat([(v - start[k]).flatten() for k, v in state.items()])
        private = local_dp(update, dp.clip, dp.noise_multiplier, dp.noise, job.generator("dp"))
        with torch.no_grad():
            for (key, value), part in zip(
                state.items(), private.split([v.numel() for v in state.values()]), strict=True
            ):
                value.copy_(start[key] + part.view_as(value))
    return job.reply(model, **metrics)
