"""Model replacement with boosting (Bagdasaryan et al. 2020; ARU Eq. 3-5).

To make the aggregate equal a chosen model R, a colluder sends gamma * (R - G) + G: the mean of
K replies moves by gamma / K times each one's update, so gamma = K (n_S / n_i with equal data)
replaces G by R when the benign updates are near zero. N colluders share it, gamma / N each.
"""

from __future__ import annotations

from typing import Any

import torch

from attacks.collusion import Coalition
from core.config import RunConfig
from core.config_base import param
from core.policy_params import PolicyParams


class BoostParams(PolicyParams):
    """Boosting, read by every replacing policy (replace, aru, aru-extract, edge-case's
    pgd-replace, targeted-poisoning with tp-boost)."""

    boost: float = param(
        0.0,
        "model replacement boosting gamma (0 -> train.clients-per-round), shared gamma/N",
        sentinel=0.0,
        ge=0,
    )

    @classmethod
    def resolve(cls, params: BoostParams, cfg: RunConfig) -> dict[str, Any]:
        """gamma = K = n_S / n_i with equal data: what replaces the global model."""
        return {"boost": float(cfg.train.clients_per_round)} if params.boost == 0 else {}


def boost(target: torch.Tensor, global_: torch.Tensor, gamma: float) -> torch.Tensor:
    """ARU Eq. 5: the reply gamma * (target - global) + global, on flat parameter vectors."""
    return global_ + gamma * (target - global_)


def boost_factor(cfg: RunConfig, coalition: Coalition) -> float:
    """gamma / N: `attack.boost` shared by the coalition."""
    return BoostParams.of(cfg).boost / coalition.size
