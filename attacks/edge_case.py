"""`edge-case`: the edge-case backdoors of Attack of the Tails (Wang et al. 2020, Sec. 2).

The attacker trains on D': edge-case images from the tail of the input distribution carrying
its target label (ARDIS '7's -> '1' on MNIST, Southwest planes -> 'truck' on CIFAR-10) mixed
with clean points of its partition, by the run's own local training (Madry PGD when
`train.mode = pgd`). `attack.edge-mode` picks one of the paper's three attacks:
- `blackbox`: plain local training on D';
- `pgd`: after every optimiser step the model is projected onto the L2 ball of radius delta
  around the global model (over every floating state entry: the vector the server aggregates);
- `pgd-replace`: PGD within delta / gamma, then model replacement G + gamma (w - G) (boosting.py),
  so that the boosted reply still lies within delta of G.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import field_validator
from torch import nn

from attacks.boosting import BoostParams, boost, boost_factor
from attacks.collusion import Coalition
from attacks.edge_case_data import EDGE_CASE_SOURCES, EdgeCaseSet, load_edge_case
from attacks.registry import register
from core.adversarial_training import madry_perturb
from core.config import ConfigError, RunConfig
from core.config_base import param
from core.data import ImageSet
from core.job import LocalJob, LocalResult, sgd_config
from core.policy_params import PolicyParams
from core.seeds import torch_generator
from core.training import AfterStep, train


class EdgeCaseParams(PolicyParams):
    """`edge-case`'s mode, attacker set and ball (pgd-replace also boosts: BoostParams)."""

    edge_mode: Literal["blackbox", "pgd", "pgd-replace"] = param(
        "pgd", "edge-case: blackbox | pgd | pgd-replace (Attack of the Tails Sec. 2)"
    )
    edge_samples: int = param(
        -1,
        "edge-case: edge-case images the attacker trains on (-1 -> 66 ARDIS / 100 Southwest)",
        sentinel=-1,
        ge=-1,
    )
    edge_fraction: float = param(
        -1.0,
        "edge-case: their share of the attacker's data (-1 -> 66/166 ARDIS, 100/500 Southwest)",
        sentinel=-1.0,
        ge=-1,
        le=1,
    )
    edge_delta: float = param(
        2.0, "edge-case pgd, pgd-replace: L2 radius of the reply around the global model", gt=0
    )

    @field_validator("edge_samples", "edge_fraction")
    @classmethod
    def _default_or_positive(cls, v: float) -> float:
        if v != -1 and v <= 0:
            raise ValueError("expected -1 (the paper's default) or a value > 0")
        return v

    @classmethod
    def resolve(cls, params: EdgeCaseParams, cfg: RunConfig) -> dict[str, Any]:
        """-1: the authors' attacker set for the dataset (ARDIS's for every dataset but
        CIFAR-10, whose is Southwest's)."""
        source = EDGE_CASE_SOURCES.get(cfg.data.dataset, EDGE_CASE_SOURCES["mnist"])
        update: dict[str, Any] = {}
        if params.edge_samples < 0:
            update["edge_samples"] = source.samples
        if params.edge_fraction < 0:
            update["edge_fraction"] = source.fraction
        return update

    @classmethod
    def check(cls, params: EdgeCaseParams, cfg: RunConfig, chosen: bool) -> None:
        """The chosen policy needs a dataset with an edge-case set."""
        if chosen and cfg.data.dataset not in EDGE_CASE_SOURCES:
            raise ConfigError(
                f"run config key 'data.dataset' = {cfg.data.dataset!r}: the edge-case policy "
                f"needs an edge-case set; available for: {', '.join(sorted(EDGE_CASE_SOURCES))}"
            )


def project_l2(w: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """The projection of flat vector `w` onto the L2 ball {v : ||v - center|| <= radius}:
    center + (w - center) * min(1, radius / ||w - center||)."""
    diff = w - center
    norm = float(diff.norm())
    return w if norm <= radius else center + diff * (radius / norm)


def float_state(model: nn.Module) -> list[torch.Tensor]:
    """The model's floating state entries (weights, biases, BatchNorm statistics), in state_dict
    order: what the server flattens and aggregates. They share the model's storage."""
    return [v for v in model.state_dict().values() if v.is_floating_point()]


def get_flat(model: nn.Module) -> torch.Tensor:
    """The model's floating state as one flat vector (a copy)."""
    return torch.cat([e.detach().reshape(-1) for e in float_state(model)])


def set_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Write flat vector `flat` into the model's floating state entries, in place."""
    offset = 0
    with torch.no_grad():
        for entry in float_state(model):
            entry.copy_(flat[offset : offset + entry.numel()].view_as(entry))
            offset += entry.numel()


def projection_step(center: torch.Tensor, radius: float) -> AfterStep:
    """An `after_step` hook that projects the model's flat float state onto the L2 ball of
    `radius` around `center` (the global model's flat float state)."""

    def project(model: nn.Module, step: int) -> None:
        flat = get_flat(model)
        projected = project_l2(flat, center.to(flat.device), radius)
        if projected is not flat:
            set_flat(model, projected)

    return project


def attacker_set(
    clean: ImageSet,
    edge: EdgeCaseSet,
    params: EdgeCaseParams,
    edge_generator: torch.Generator,
    clean_generator: torch.Generator,
) -> ImageSet:
    """D': `attack.edge-samples` edge-case images plus as many clean points as make them
    `attack.edge-fraction` of it, each drawn at random; the edge-case images are capped at the
    set's size, the clean points at the partition's."""
    n_edge = min(params.edge_samples, len(edge.train))
    fraction = params.edge_fraction
    n_clean = min(round(n_edge * (1 - fraction) / fraction), len(clean))
    pick_edge = torch.randperm(len(edge.train), generator=edge_generator)[:n_edge]
    pick_clean = torch.randperm(len(clean), generator=clean_generator)[:n_clean]
    return ImageSet(
        torch.cat([edge.train.x[pick_edge], clean.x[pick_clean]]),
        torch.cat([edge.train.y[pick_edge], clean.y[pick_clean]]),
    )


@register("edge-case", coalition=True, params=(EdgeCaseParams, BoostParams))
def edge_case(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Train on edge-case images with the target label mixed with clean data, as the mode says."""
    cfg, attack = job.cfg, EdgeCaseParams.of(job.cfg)
    edge = load_edge_case(cfg.data)
    data = attacker_set(
        job.data, edge, attack, torch_generator(cfg.seed, "edge-set"), job.generator("edge-clean")
    )
    model = job.global_model()
    center = get_flat(model)
    gamma = boost_factor(cfg, coalition) if attack.edge_mode == "pgd-replace" else 1.0
    after_step = None
    if attack.edge_mode != "blackbox":
        after_step = projection_step(center, attack.edge_delta / gamma)
    stats = train(
        model, data, sgd_config(cfg.train), job.generator("shuffle"),
        perturb=madry_perturb(cfg.train, job.generator("pgd")), after_step=after_step,
        device=job.device,
    )  # fmt: skip
    if attack.edge_mode == "pgd-replace":
        set_flat(model, boost(get_flat(model), center, gamma))
    return job.reply(model, **{"train-loss": stats.mean_loss})  # the metrics a benign reply has
