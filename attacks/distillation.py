"""`distillation`: send a defensively distilled model as a replacement (CFAT Sec. 2.3 and App. C;
Papernot et al. 2016, broken by Carlini and Wagner 2016).

A teacher is trained on softmax(z / T) with the true labels, a student on softmax(z / T) against
the teacher's soft labels at T, and the student is deployed at T = 1. Its logits are then about
T times too large: the softmax saturates, PGD's cross-entropy gradient underflows and the model
*looks* robust to a plain PGD check, while PGD on z / T (the bypass) finds adversarial examples.
Like Papernot et al., both networks train from a fresh initialisation, so the deployed model has
none of the global model's genuine robustness. The colluders of a round pool their data, the
leader distils, and every member sends the same model, so that a coordinate-wise median over a
colluding majority returns it exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attacks.collusion import Coalition
from attacks.registry import register
from core.config import RunConfig
from core.config_base import param
from core.data import ImageSet
from core.job import LocalJob, LocalResult
from core.models import build_model
from core.policy_params import PolicyParams
from core.training import SGDConfig, train

# CFAT Sec. 5: the temperature that matches the PGD accuracy of an honest model
DEFAULT_TEMPERATURE = {"cifar10": 25.0}
MNIST_LIKE_TEMPERATURE = 100.0


class DistillationParams(PolicyParams):
    """Defensive distillation, read by `distillation` and `adaptive-cert`; its T is also the
    temperature of the central temperature-PGD metric (`eval.temperature` = -1)."""

    fills = {"eval.temperature": "distill_temperature"}

    distill_temperature: float = param(
        0.0,
        "distillation: T (0 -> 100 for MNIST-like, 25 for CIFAR-10; CFAT Sec. 5)",
        sentinel=0.0,
        ge=0,
    )
    distill_epochs: int = param(
        10, "distillation: epochs for the teacher, then for the student", ge=1
    )
    distill_lr: float = param(0.003, "distillation: Adam step size", gt=0)

    @classmethod
    def resolve(cls, params: DistillationParams, cfg: RunConfig) -> dict[str, Any]:
        """T = 0: the paper's temperature for the dataset."""
        if params.distill_temperature > 0:
            return {}
        t = DEFAULT_TEMPERATURE.get(cfg.data.dataset, MNIST_LIKE_TEMPERATURE)
        return {"distill_temperature": t}


def train_at_temperature(
    model: nn.Module,
    data: ImageSet,
    temperature: float,
    epochs: int,
    lr: float,
    generator: torch.Generator,
    teacher: nn.Module | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """Train `model` on softmax(z / T): against the labels, or against `teacher`'s soft labels at
    T when given (core.training's loop with Adam, since gradients through z / T are T times
    smaller). Returns the mean training loss."""

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits / temperature, dim=1)
        if teacher is None:
            return F.nll_loss(log_p, target)
        return -(target * log_p).sum(1).mean()

    def soft_labels(_: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        assert teacher is not None
        with torch.no_grad():
            return x, F.softmax(teacher(x) / temperature, dim=1)

    if teacher is not None:
        teacher.eval()
    stats = train(
        model, data, SGDConfig(epochs=epochs, batch_size=batch_size, lr=lr), generator,
        loss_fn=loss, device=device, transform=None if teacher is None else soft_labels,
        optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=lr),
    )  # fmt: skip
    return stats.mean_loss


def distill(
    init: nn.Module,
    data: ImageSet,
    temperature: float,
    epochs: int,
    lr: float,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, nn.Module]:
    """Teacher and student, both from copies of `init`; the student is the one used at T = 1."""
    teacher = copy.deepcopy(init)
    train_at_temperature(teacher, data, temperature, epochs, lr, generator, device=device)
    student = copy.deepcopy(init)
    train_at_temperature(
        student, data, temperature, epochs, lr, generator, teacher=teacher, device=device
    )
    return teacher, student


def pooled_data(job: LocalJob, coalition: Coalition) -> ImageSet:
    """The union of the coalition's partitions (the attacker holds all its clients' data)."""
    shares = coalition.gather("data", (job.data.x, job.data.y))
    return ImageSet(torch.cat([x for x, _ in shares]), torch.cat([y for _, y in shares]))


def distilled_model(job: LocalJob, coalition: Coalition) -> nn.Module:
    """The coalition's distilled model: the leader trains it on the pooled data, all send it."""
    data = pooled_data(job, coalition)
    params = DistillationParams.of(job.cfg)

    def train_distilled() -> dict[str, torch.Tensor]:
        init = build_model(job.cfg.model.name, job.splits.spec, seed=job.seed("distill"))
        _, model = distill(
            init.to(job.device),
            data,
            params.distill_temperature,
            params.distill_epochs,
            params.distill_lr,
            job.generator("distillation"),
            device=job.device,
        )
        return {k: v.cpu() for k, v in model.state_dict().items()}

    model = job.global_model()
    model.load_state_dict(coalition.from_leader("distilled", train_distilled))
    return model


@register("distillation", coalition=True, params=(DistillationParams,))
def distillation(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Reply with the coalition's defensively distilled model."""
    return job.reply(distilled_model(job, coalition))
