"""CRFL's server step (Xie et al., ICML 2021): clip the new global model's parameter norm to
rho_t, then add N(0, sigma_t^2 I), every round after the robust aggregation.

The schedule follows the authors' MNIST code: rho_t = min(rho, rho_start + rho_growth * t) and
sigma_t = sigma for t < T. The last round's model is released clipped but without noise: its
noise, sigma_T, is the parameter smoothing applied at test time (certify/crfl.py).
"""

from __future__ import annotations

from logging import INFO

import torch
from flwr.app import ArrayRecord
from flwr.supercore import log

from core.config import CRFLConfig
from core.params import flatten_record, unflatten_to_record
from core.seeds import torch_generator
from strategies.replies import CheckedReplies
from strategies.robust import RobustStrategy


def clip_threshold(server_round: int, crfl: CRFLConfig) -> float:
    """rho_t = min(rho, rho_start + rho_growth * t)."""
    return crfl.clip_threshold(server_round)


def server_sigma(server_round: int, num_rounds: int, crfl: CRFLConfig) -> float:
    """sigma_t, the std of the noise the server adds to the model in round t: `crfl.sigma`
    before the last round, 0 in it (its noise is sigma_T, the smoothing at test time)."""
    return crfl.sigma if server_round < num_rounds else 0.0


def clip_norm(w: torch.Tensor, rho: float) -> torch.Tensor:
    """w / max(1, ||w||_2 / rho): the parameter vector scaled into the L2 ball of radius rho."""
    norm = float(w.norm())
    return w * (rho / norm) if norm > rho else w.clone()


def clip_and_perturb(
    w: torch.Tensor, rho: float, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """CRFL's server step on a flat parameter vector: clip_norm(w, rho) + N(0, sigma^2 I).

    >>> generator = torch.Generator().manual_seed(0)
    >>> w = torch.full((4,), 3.0)
    >>> float(clip_and_perturb(w, rho=2.0, sigma=0.0, generator=generator).norm())
    2.0
    """
    noise = torch.randn(w.shape, generator=generator, dtype=w.dtype)
    return clip_norm(w, rho) + sigma * noise


class CRFLStrategy(RobustStrategy):
    """The robust strategy followed by CRFL's clip-and-perturb step on the aggregated model.

    Parameters (run config `crfl.*`, besides the robust strategy's): rho, rho-start, rho-growth
    fix the clip threshold rho_t; sigma the noise std in rounds t < num-rounds; the noise is
    seeded by the run seed and the round.
    """

    def aggregate_models(self, checked: CheckedReplies, server_round: int) -> ArrayRecord:
        """Aggregate as the robust rule does, then clip to rho_t and add sigma_t noise."""
        candidate = super().aggregate_models(checked, server_round)
        crfl = self.cfg.crfl
        w = flatten_record(candidate, self.layout)
        rho = clip_threshold(server_round, crfl)
        sigma = server_sigma(server_round, self.cfg.num_rounds, crfl)
        generator = torch_generator(self.cfg.seed, "crfl-noise", server_round)
        stepped = clip_and_perturb(w, rho, sigma, generator)
        log(INFO, "[certfl] crfl round %d: norm %.3f clipped to rho_t %.3f, noise sigma_t %g",
            server_round, float(w.norm()), rho, sigma)  # fmt: skip
        return unflatten_to_record(stepped, self.layout, candidate)
