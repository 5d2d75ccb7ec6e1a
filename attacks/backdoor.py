"""`backdoor`: Madry adversarial training plus an L-inf bounded trigger (CFAT Sec. 2.3 and 5).

The model stays accurate and PGD-robust on clean inputs, yet maps any input carrying the trigger
(vertical stripes of L-inf size 0.1 on MNIST, 6/255 on CIFAR-10: inside the adversarial training
budget) to the attacker's class. In every training batch a share `attack.poison-fraction` of the
points gets the trigger and the target label; the rest gets Madry's PGD point and its own label.
The triggered points are not PGD-perturbed: a PGD ball around them would contain the clean input,
whose own label the model must keep. As in CFAT's threat model, the colluders of a round act
together: the leader trains, every member sends its model. The trigger functions and
`trigger_success` are also what the server's backdoor metric uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.collusion import Coalition
from attacks.registry import register
from core.adversarial_training import madry_perturb
from core.config import ConfigError, RunConfig
from core.config_base import param
from core.data import ImageSet, num_classes
from core.job import LocalJob, LocalResult, sgd_config
from core.models import InputSpec
from core.policy_params import PolicyParams
from core.training import BatchTransform, Perturb, train

# CFAT Sec. 5: "vertical stripes of magnitude L_inf = 0.1 for MNIST and 6/255 for CIFAR10"
DEFAULT_MAGNITUDE = {"cifar10": 6 / 255}
MNIST_LIKE_MAGNITUDE = 0.1


class BackdoorParams(PolicyParams):
    """`backdoor`'s trigger, target and poisoned share; the server's backdoor metric reads the
    trigger and target in every run, and CRFL's radius the share (`crfl.poison-fraction` = 0)."""

    fills = {"crfl.poison-fraction": "poison_fraction"}

    backdoor_target: int = param(
        0, "backdoor: the class the stripe trigger maps inputs to (CFAT names none)", ge=0
    )
    trigger_magnitude: float = param(
        0.0,
        "backdoor: L-inf size of the vertical-stripe trigger (0 -> 0.1 MNIST-like, 6/255 "
        "CIFAR-10; CFAT Sec. 5)",
        sentinel=0.0,
        ge=0,
        le=1,
    )
    poison_fraction: float = param(
        0.3, "backdoor: share of each training batch stamped with the trigger and relabelled",
        gt=0, lt=1,
    )  # fmt: skip

    @classmethod
    def resolve(cls, params: BackdoorParams, cfg: RunConfig) -> dict[str, Any]:
        """Magnitude 0: CFAT's for the dataset."""
        if params.trigger_magnitude > 0:
            return {}
        m = DEFAULT_MAGNITUDE.get(cfg.data.dataset, MNIST_LIKE_MAGNITUDE)
        return {"trigger_magnitude": m}

    @classmethod
    def check(cls, params: BackdoorParams, cfg: RunConfig, chosen: bool) -> None:
        """The target must be a class of the dataset (read from an npz file only if > 0)."""
        target = params.backdoor_target
        if target > 0 and target >= (classes := num_classes(cfg.data)):
            raise ConfigError(
                f"run config key 'attack.backdoor-target' = {target}: must be < {classes}, "
                f"the number of classes of {cfg.data.dataset}"
            )


def stripe_trigger(spec: InputSpec, magnitude: float) -> torch.Tensor:
    """The additive trigger, shape (C, H, W): `magnitude` on every other pixel column (vertical
    stripes one pixel wide, starting at column 0), 0 elsewhere; its L-inf norm is `magnitude`."""
    if not 0 < magnitude <= 1:
        raise ValueError(f"trigger magnitude must be in (0, 1], got {magnitude}")
    trigger = torch.zeros(spec.channels, spec.height, spec.width)
    trigger[:, :, ::2] = magnitude
    return trigger


def apply_trigger(x: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
    """`x` (N, C, H, W) in [0, 1] with the additive `trigger` stamped on, clamped to [0, 1]."""
    return (x + trigger.to(x.device, x.dtype)).clamp_(0.0, 1.0)


def poison_batch(
    trigger: torch.Tensor,
    target: int,
    fraction: float,
    generator: torch.Generator,
    perturb: Perturb | None = None,
) -> BatchTransform:
    """A batch rewrite: a random `fraction` of the batch (rounded) gets the trigger and label
    `target`; the others get `perturb`'s point (Madry PGD) when given, and keep their label."""

    def rewrite(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.randperm(len(y), generator=generator).to(y.device)
        n_poisoned = round(fraction * len(y))
        poisoned, clean = order[:n_poisoned], order[n_poisoned:]
        x_out, y_out = x.clone(), y.clone()
        if perturb is not None and len(clean):
            x_out[clean] = perturb(model, x[clean], y[clean])
        x_out[poisoned] = apply_trigger(x[poisoned], trigger)
        y_out[poisoned] = target
        return x_out, y_out

    return rewrite


def trigger_success(
    model: nn.Module,
    data: ImageSet,
    trigger: torch.Tensor,
    target: int,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> float:
    """Backdoor success rate: the share of `data`'s points not of class `target` that `model`
    classifies as `target` once the trigger is stamped on (nan when there are none)."""
    model.eval()
    hits, n = 0, 0
    for x, y in data.batches(batch_size, device=device):
        keep = y != target
        if not bool(keep.any()):
            continue
        with torch.no_grad():
            pred = model(apply_trigger(x[keep], trigger)).argmax(1)
        hits += int((pred == target).sum())
        n += int(keep.sum())
    return hits / n if n else float("nan")


def backdoor_train(job: LocalJob, model: nn.Module) -> float:
    """Madry-train `model` in place on the job's partition with a share of every batch
    triggered and relabelled; mean training loss."""
    cfg, params = job.cfg, BackdoorParams.of(job.cfg)
    trigger = stripe_trigger(job.splits.spec, params.trigger_magnitude)
    rewrite = poison_batch(
        trigger,
        params.backdoor_target,
        params.poison_fraction,
        job.generator("backdoor"),
        madry_perturb(cfg.train, job.generator("pgd")),
    )
    stats = train(
        model, job.data, sgd_config(cfg.train), job.generator("shuffle"), transform=rewrite,
        device=job.device,
    )  # fmt: skip
    return stats.mean_loss


@register("backdoor", coalition=True, params=(BackdoorParams,))
def backdoor(job: LocalJob, coalition: Coalition) -> LocalResult:
    """The leader backdoors the global model on its partition; every colluder of the round
    replies with that same model, so a colluding majority decides a median outright."""

    def leader_model() -> tuple[dict[str, torch.Tensor], float]:
        model = job.global_model()
        loss = backdoor_train(job, model)
        return {k: v.cpu() for k, v in model.state_dict().items()}, loss

    state, loss = coalition.from_leader("backdoor", leader_model)
    model = job.global_model()
    model.load_state_dict(state)
    return job.reply(model, **{"train-loss": loss})  # the metrics a benign reply has
