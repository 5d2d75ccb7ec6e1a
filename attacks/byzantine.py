"""Byzantine baselines: sign flip, Gaussian noise, ALIE and IPM, as replies G + crafted update.

What each attacker knows: sign flip only its own benign update U - G (its partition, trained as
a benign client would); Gaussian noise nothing; ALIE and IPM need the benign updates of the
round, which the colluders do not see: they estimate them by the benign updates they compute
themselves on their own partitions, shared through the coalition (`Coalition.gather`), so every
colluder sends the same vector. With one colluder ALIE's spread estimate is zero.
"""

from __future__ import annotations

from statistics import NormalDist

import torch

from attacks.collusion import Coalition
from attacks.registry import register
from attacks.updates import layout_of, model_update, reply_with_update
from core.adversarial_training import benign_train
from core.config import ConfigError, RunConfig
from core.config_base import param
from core.job import LocalJob, LocalResult
from core.policy_params import PolicyParams


class SignFlipParams(PolicyParams):
    """`sign-flip`'s scale."""

    flip_scale: float = param(1.0, "sign-flip: c, the reply is G - c * (U - G)", gt=0)


class GaussianParams(PolicyParams):
    """`gaussian`'s noise."""

    noise_std: float = param(1.0, "gaussian: sigma, the reply is G + N(0, sigma^2)", gt=0)


class AlieParams(PolicyParams):
    """`alie`'s z_max; its default needs the colluders present in the round, so `alie_policy`
    resolves it there."""

    alie_z: float = param(
        0.0,
        "alie: z_max (0 -> Baruch et al. 2019 formula from clients-per-round n and colluders f)",
        sentinel=0.0,
        resolved_in="attacks.byzantine.alie_policy (f: the colluders present in the round)",
        ge=0,
    )

    @classmethod
    def check(cls, params: AlieParams, cfg: RunConfig, chosen: bool) -> None:
        """The formula needs n >= 2."""
        n = cfg.train.clients_per_round
        if chosen and params.alie_z == 0 and n < 2:
            raise ConfigError(
                f"run config key 'train.clients-per-round' = {n}: alie's z_max formula needs "
                "at least 2; set attack.alie-z"
            )


class IpmParams(PolicyParams):
    """`ipm`'s epsilon."""

    ipm_epsilon: float = param(
        0.1, "ipm: epsilon, the reply's update is -epsilon * mean benign update", gt=0
    )


def sign_flip(update: torch.Tensor, scale: float) -> torch.Tensor:
    """The flipped update -c * (U - G): the reply is G - c (U - G)."""
    return -scale * update


def gaussian_update(size: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """An update of i.i.d. N(0, sigma^2) entries: the reply is G + N(0, sigma^2 I)."""
    return std * torch.randn(size, generator=generator)


def alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019 z_max for n clients, f of them Byzantine.

    Formula: s = floor(n/2 + 1) - f (benign clients the attack needs on its side, at least 1),
    z_max = Phi^-1((n - s) / n), Phi the standard normal CDF. Precondition: n >= 2.

    >>> round(alie_z(50, 24), 3)
    1.751
    """
    if n < 2:
        raise ValueError(f"ALIE needs n >= 2 clients per round, got {n}")
    s = max(n // 2 + 1 - f, 1)
    return NormalDist().inv_cdf((n - s) / n)


def alie(updates: torch.Tensor, z: float) -> torch.Tensor:
    """ALIE on a (M, P) stack of benign updates: mean - z * std per coordinate.

    The std is the unbiased sample std (0 for a single row).
    """
    std = updates.std(0) if len(updates) > 1 else torch.zeros_like(updates[0])
    return updates.mean(0) - z * std


def ipm(updates: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Xie et al. 2020 inner product manipulation on a (M, P) stack: -epsilon * mean."""
    return -epsilon * updates.mean(0)


def _own_update(job: LocalJob) -> torch.Tensor:
    """This colluder's benign update: Madry (or plain) training from G, as a benign client."""
    model = job.global_model()
    benign_train(job, model)
    return model_update(job, model)


def _colluders_updates(job: LocalJob, coalition: Coalition, key: str) -> torch.Tensor:
    """The (M, P) stack of every colluder's own benign update, in member order."""
    return torch.stack(coalition.gather(key, _own_update(job)))


@register("sign-flip", params=(SignFlipParams,))
def sign_flip_policy(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Reply G - c (U - G) with U this client's benign model, c = `attack.flip-scale`."""
    return reply_with_update(
        job, sign_flip(_own_update(job), SignFlipParams.of(job.cfg).flip_scale)
    )


@register("gaussian", params=(GaussianParams,))
def gaussian_policy(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Reply G + N(0, sigma^2 I), sigma = `attack.noise-std`."""
    size = layout_of(job).size
    noise = gaussian_update(size, GaussianParams.of(job.cfg).noise_std, job.generator("gaussian"))
    return reply_with_update(job, noise)


@register("alie", coalition=True, params=(AlieParams,))
def alie_policy(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Reply G + mean - z_max std of the colluders' benign updates (n = clients-per-round);
    `attack.alie-z` = 0 resolved here, with f the colluders present."""
    z = AlieParams.of(job.cfg).alie_z or alie_z(job.cfg.train.clients_per_round, coalition.size)
    return reply_with_update(job, alie(_colluders_updates(job, coalition, "alie-update"), z))


@register("ipm", coalition=True, params=(IpmParams,))
def ipm_policy(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Reply G - epsilon * mean of the colluders' benign updates, epsilon = `attack.ipm-epsilon`."""
    updates = _colluders_updates(job, coalition, "ipm-update")
    return reply_with_update(job, ipm(updates, IpmParams.of(job.cfg).ipm_epsilon))
