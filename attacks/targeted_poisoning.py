"""`targeted-poisoning`: make the global model give chosen wrong labels to a few images (FL-WBC
Sec. 4.1 Eq. 3, after Bhagoji et al. 2019).

A malicious client trains from the global model on
    alpha * CE(benign batch) + (1 - alpha) * CE(D_M, adversarial labels)
every step (`attack.tp-alpha`; the benign part is what a benign client would do, Madry PGD
included when `train.mode = pgd`), and with `attack.tp-boost` scales its update by
`boost_factor` (attacks/boosting.py) as Bhagoji et al.'s explicit boosting does.

D_M (shared by all colluders, recomputed by the evaluator from the run config alone): the
`attack.tp-n-images` last points of the run's seeded test order (`core.data.test_order`), whose
head is the central evaluation subset. So D_M follows the training distribution, is data the
attackers hold beside their partitions, never appears in a benign client's data (clients share
the training pool) and stays out of the clean-accuracy subset (unless `eval.n-test` covers the
whole test set). Each image gets the adversarial label (y + 1 + r) mod C with r drawn uniformly
from [0, C - 2] under the run seed: never its true label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.boosting import BoostParams, boost, boost_factor
from attacks.collusion import Coalition
from attacks.registry import register
from core.adversarial_training import madry_perturb
from core.config_base import param
from core.data import ImageSet, test_order
from core.job import LocalJob, LocalResult, sgd_config
from core.policy_params import PolicyParams
from core.seeds import torch_generator
from core.training import Perturb, SGDConfig, TrainStats, train


class TargetedPoisoningParams(PolicyParams):
    """`targeted-poisoning`'s loss, D_M and boosting switch (the server's D_M metric reads
    tp-n-images in every run)."""

    tp_alpha: float = param(
        0.5, "targeted-poisoning: loss = alpha * benign + (1 - alpha) * D_M (FL-WBC Eq. 3)",
        ge=0, le=1,
    )  # fmt: skip
    tp_n_images: int = param(1, "targeted-poisoning: images in D_M (FL-WBC: 1 or 10)", ge=1)
    tp_boost: bool = param(
        False, "targeted-poisoning: boost the update by attack.boost (Bhagoji et al.)"
    )


def malicious_dataset(test: ImageSet, n_images: int, num_classes: int, seed: int) -> ImageSet:
    """D_M: the last `n_images` points of the seeded test order, with adversarial labels."""
    if not 1 <= n_images <= len(test):
        raise ValueError(f"D_M needs 1 <= n_images <= {len(test)} test points, got {n_images}")
    if num_classes < 2:
        raise ValueError(f"adversarial labels need at least 2 classes, got {num_classes}")
    index = test_order(len(test), seed)[-n_images:]
    y = test.y[index]
    shift = torch.randint(0, num_classes - 1, y.shape, generator=torch_generator(seed, "tp-labels"))
    return ImageSet(test.x[index], (y + 1 + shift) % num_classes)


@dataclass(frozen=True)
class Misclassification:
    """How well a model serves the attacker on D_M (FL-WBC Sec. 7.1 attack metric)."""

    confidence: float  # mean softmax probability of the adversarial label
    accuracy: float  # share of D_M classified as its adversarial label


def misclassification(
    model: nn.Module, d_m: ImageSet, device: str | torch.device = "cpu"
) -> Misclassification:
    """Mean probability the model gives D_M's adversarial labels, and how often it picks them."""
    model.eval()
    x, y = d_m.tensors(device)
    with torch.no_grad():
        prob = F.softmax(model(x), dim=1)
    confidence = prob.gather(1, y[:, None]).mean()
    return Misclassification(float(confidence), float((prob.argmax(1) == y).float().mean()))


def poisoned_train(
    model: nn.Module,
    data: ImageSet,
    d_m: ImageSet,
    alpha: float,
    cfg: SGDConfig,
    generator: torch.Generator,
    perturb: Perturb | None = None,
    device: str | torch.device = "cpu",
) -> TrainStats:
    """FL-WBC Eq. 3: SGD on alpha * benign loss + (1 - alpha) * CE on all of D_M, in place."""
    x_m, y_m = d_m.tensors(device)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return alpha * F.cross_entropy(logits, y) + (1 - alpha) * F.cross_entropy(model(x_m), y_m)

    return train(model, data, cfg, generator, perturb=perturb, loss_fn=loss, device=device)


def boosted(model: nn.Module, start: nn.Module, gamma: float) -> nn.Module:
    """Replace `model`'s floating state by start + gamma * (model - start), in place."""
    base = start.state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(boost(value, base[key], gamma))
    return model


@register("targeted-poisoning", params=(TargetedPoisoningParams, BoostParams))
def targeted_poisoning(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Train on the benign data and D_M (Eq. 3), boost if asked, and reply with the model."""
    cfg, t, params = job.cfg, job.cfg.train, TargetedPoisoningParams.of(job.cfg)
    d_m = malicious_dataset(
        job.splits.test, params.tp_n_images, job.splits.spec.num_classes, cfg.seed
    )
    model = job.global_model()
    stats = poisoned_train(
        model, job.data, d_m, params.tp_alpha, sgd_config(t), job.generator("shuffle"),
        madry_perturb(t, job.generator("pgd")), job.device,
    )  # fmt: skip
    if params.tp_boost:
        boosted(model, job.global_model(), boost_factor(cfg, coalition))
    return job.reply(model, **{"train-loss": stats.mean_loss})
