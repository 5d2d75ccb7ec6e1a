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

import torch
from torch import nn

from attacks.adversarial_training import madry_perturb
from attacks.boosting import boost, boost_factor
from attacks.collusion import Coalition
from attacks.edge_case_data import EdgeCaseSet, load_edge_case
from attacks.registry import register
from core.config import AttackConfig
from core.data import ImageSet
from core.job import LocalJob, LocalResult, sgd_config
from core.seeds import torch_generator
from core.training import AfterStep, train


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
    attack: AttackConfig,
    edge_generator: torch.Generator,
    clean_generator: torch.Generator,
) -> ImageSet:
    """D': `attack.edge-samples` edge-case images (-1: the authors' count) plus as many clean
    points as make them `attack.edge-fraction` of it (-1: the authors' share), each drawn at
    random; the clean points are capped at the partition's size."""
    n_edge = min(edge.samples if attack.edge_samples < 0 else attack.edge_samples, len(edge.train))
    fraction = edge.fraction if attack.edge_fraction < 0 else attack.edge_fraction
    n_clean = min(round(n_edge * (1 - fraction) / fraction), len(clean))
    pick_edge = torch.randperm(len(edge.train), generator=edge_generator)[:n_edge]
    pick_clean = torch.randperm(len(clean), generator=clean_generator)[:n_clean]
    return ImageSet(
        torch.cat([edge.train.x[pick_edge], clean.x[pick_clean]]),
        torch.cat([edge.train.y[pick_edge], clean.y[pick_clean]]),
    )


@register("edge-case", coalition=True)
def edge_case(job: LocalJob, coalition: Coalition) -> LocalResult:
    """Train on edge-case images with the target label mixed with clean data, as the mode says."""
    cfg, attack = job.cfg, job.cfg.attack
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
