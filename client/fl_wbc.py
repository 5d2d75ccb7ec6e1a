"""The `fl-wbc` role: benign local training with FL-WBC's perturbation after every step
(Sun et al. 2021, Sec. 5.1 Eq. 8-10, Algorithm 1).

With dW_i the change of the weights over local step i, |dW_{i+1} - dW_i| / eta estimates the
Hessian diagonal times the step: where it is at most |Y| (Y Laplace noise, drawn afresh every
step) the direction is flat, the kind of direction where a poisoning's effect outlives the
attack, and the weights there get eta * Y. The first step of a round is not perturbed (no dW_0).

Noise parameter: the paper calls s the std of Y, the authors' code passes s as the Laplace scale
b (std sqrt(2) b); `fl-wbc.s-means` picks which (`scale`, the default, reproduces the code). The
hook works under any optimiser step, plain SGD or Madry PGD training alike (core/training.py
calls it after each step).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from client.local import honest_reply
from core.adversarial_training import benign_train
from core.config import FLWBCConfig
from core.job import LocalJob, LocalResult
from core.privacy import laplace


def laplace_scale(cfg: FLWBCConfig) -> float:
    """The Laplace scale b that `fl-wbc.s` stands for under `fl-wbc.s-means`."""
    return cfg.s if cfg.s_means == "scale" else cfg.s / math.sqrt(2)


def wbc_perturbation(step: Tensor, previous_step: Tensor, lr: float, noise: Tensor) -> Tensor:
    """FL-WBC Eq. 9-10: eta * Y * M with M = (|dW_{i+1} - dW_i| / eta <= |Y|), elementwise.

    >>> wbc_perturbation(torch.tensor([0.0, 1.0]), torch.zeros(2), 0.1, torch.tensor([0.5, 0.5]))
    tensor([0.0500, 0.0000])
    """
    mask = (step - previous_step).abs() / lr <= noise.abs()
    return lr * noise * mask


class FLWBCHook:
    """`after_step` hook of core.training.train that applies FL-WBC to the model's parameters."""

    def __init__(
        self, model: nn.Module, lr: float, scale: float, generator: torch.Generator
    ) -> None:
        self.lr = lr
        self.scale = scale
        self.generator = generator
        self.last = parameters_to_vector(model.parameters()).detach().clone()  # W_{-1}
        self.previous_step: Tensor | None = None  # W_{-1} - W_{-2}
        self.perturbed: list[float] = []  # share of coordinates perturbed, per perturbed step

    def __call__(self, model: nn.Module, step: int) -> None:
        """Perturb the flat directions of the step just taken (Algorithm 1, lines 7-14)."""
        with torch.no_grad():
            weights = parameters_to_vector(model.parameters())
            delta = weights - self.last
            if self.previous_step is not None:
                y = laplace(weights.shape, self.scale, self.generator).to(weights)
                bump = wbc_perturbation(delta, self.previous_step, self.lr, y)
                self.perturbed.append(float((bump != 0).float().mean()))
                weights = weights + bump
                vector_to_parameters(weights, model.parameters())
            self.previous_step = weights - self.last
            self.last = weights.clone()


def fl_wbc_update(job: LocalJob) -> LocalResult:
    """Train a copy of the global model benignly with FL-WBC after every step; reply with it."""
    model = job.global_model()
    hook = FLWBCHook(model, job.cfg.train.lr, laplace_scale(job.cfg.fl_wbc), job.generator("wbc"))
    loss = benign_train(job, model, after_step=hook)
    share = sum(hook.perturbed) / max(len(hook.perturbed), 1)
    return honest_reply(job, model, **{"train-loss": loss, "wbc-perturbed-share": share})
