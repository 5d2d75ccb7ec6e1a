"""L-inf PGD (Madry et al.), optionally on logits divided by a temperature: a training and
evaluation tool (honest adversarial training, the gate's and the server's robust accuracy), not
a client policy.

Attacking softmax(z / T) with a large T is how Carlini and Wagner expose the gradient masking of
defensive distillation (CFAT Sec. 2.3): at T = 1 the distilled softmax saturates and PGD's
gradient vanishes, at T = 100 it does not. All functions keep inputs in the box [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.data import ImageSet
from core.training import EvalResult, evaluate


@dataclass(frozen=True)
class PGDConfig:
    """Budget and schedule of an L-inf PGD attack (Madry et al. 2018)."""

    eps: float
    steps: int = 10
    step_size: float | None = None  # None: 2.5 * eps / steps, Madry's rule of thumb
    random_start: bool = True
    restarts: int = 1
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"PGD eps must be >= 0, got {self.eps}")
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(
                f"PGD needs steps >= 0 and restarts >= 1, got {self.steps}, {self.restarts}"
            )
        if self.temperature <= 0:
            raise ValueError(f"PGD temperature must be > 0, got {self.temperature}")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        if self.step_size is not None:
            return self.step_size
        return 2.5 * self.eps / max(self.steps, 1)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps around x, intersected with [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def _one_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PGDConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One PGD run from a random (or the clean) start; returns the last iterate."""
    if cfg.random_start and cfg.eps > 0:
        # drawn on the CPU so that one seeded CPU generator serves any device
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = _project(x + (2 * noise - 1) * cfg.eps, x, cfg.eps)
    else:
        x_adv = x.clone()
    for _ in range(cfg.steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv) / cfg.temperature, y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = _project(x_adv.detach() + cfg.alpha * grad.sign(), x, cfg.eps)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PGDConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L-inf PGD with restarts: per sample, the first restart that fools the model.

    The model's train/eval mode is left as the caller set it; parameters get no gradients.
    """
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        best = _one_run(model, x, y, cfg, generator)
        for _ in range(cfg.restarts - 1):
            with torch.no_grad():
                fooled = model(best).argmax(1) != y
            if bool(fooled.all()):
                break
            candidate = _one_run(model, x, y, cfg, generator)
            best = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), best, candidate)
    finally:
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return best


def pgd_evaluate(
    model: nn.Module,
    data: ImageSet,
    cfg: PGDConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Accuracy and loss of `model` on PGD points of `data` (robust accuracy at `cfg.eps`)."""
    return evaluate(
        model, data, batch_size, lambda m, x, y: pgd(m, x, y, cfg, generator), device=device
    )
