"""Generic local training and evaluation loops.

Adversarial training plugs in through `perturb`: a function `(model, x, y) -> x_adv` that the
loop applies to every batch (Madry et al.: train on the PGD point of each batch;
`core.adversarial_training.madry_perturb` builds it from `core.evasion.pgd`). Hooks
(`after_step`) let client-side defenses such as FL-WBC act after every optimiser step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.data import ImageSet

Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
# rewrites a batch's inputs and labels (e.g. a backdoor stamping a trigger and the target class)
BatchTransform = Callable[
    [nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]
AfterStep = Callable[[nn.Module, int], None]
MakeOptimizer = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass(frozen=True)
class SGDConfig:
    """Local optimiser settings."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class TrainStats:
    """What one local training run did."""

    steps: int
    examples: int
    mean_loss: float
    seconds: float


def train(
    model: nn.Module,
    data: ImageSet,
    cfg: SGDConfig,
    generator: torch.Generator,
    perturb: Perturb | None = None,
    after_step: AfterStep | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    device: str | torch.device = "cpu",
    transform: BatchTransform | None = None,
    optimizer: MakeOptimizer | None = None,
) -> TrainStats:
    """SGD over `data` for `cfg.epochs`, on perturbed batches when `perturb` is given, then on
    the batches `transform` rewrites (inputs and labels) when it is given. `optimizer` builds
    another optimiser for `model` (the batch size and epochs still come from `cfg`)."""
    if len(data) == 0:
        raise ValueError("cannot train on an empty data set")
    start = time.perf_counter()
    if optimizer is None:
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = optimizer(model)
    steps, total_loss, seen = 0, 0.0, 0
    for _ in range(cfg.epochs):
        for x, y in data.batches(cfg.batch_size, shuffle=True, generator=generator, device=device):
            if perturb is not None:
                model.eval()  # craft against fixed BatchNorm statistics
                x = perturb(model, x, y)
            if transform is not None:
                model.eval()
                x, y = transform(model, x, y)
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            steps += 1
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            if after_step is not None:
                after_step(model, steps)
    model.eval()
    return TrainStats(steps, seen, total_loss / max(seen, 1), time.perf_counter() - start)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy and mean cross-entropy on a data set."""

    accuracy: float
    loss: float
    n: int


def evaluate(
    model: nn.Module,
    data: ImageSet,
    batch_size: int = 500,
    perturb: Perturb | None = None,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Accuracy and loss of `model` (eval mode) on `data`, on perturbed inputs if `perturb`."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in data.batches(batch_size, device=device):
        if perturb is not None:
            x = perturb(model, x, y)
        with torch.no_grad():
            logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    if n == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    return EvalResult(correct / n, loss / n, n)
