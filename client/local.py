"""Benign local training of one client: its partition of the pool, SGD or Madry PGD training."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from attacks.evasion import PGDConfig, pgd
from core.config import NodeConfig, RunConfig, TrainConfig
from core.data import ImageSet, load_splits
from core.device import resolve_device
from core.models import build_model
from core.params import load_record, model_to_record
from core.partition import client_indices
from core.seeds import torch_generator
from core.training import Perturb, SGDConfig, train


@dataclass(frozen=True)
class LocalJob:
    """Everything a client policy needs for one round."""

    cfg: RunConfig
    node: NodeConfig
    global_arrays: ArrayRecord
    server_round: int

    def data(self) -> ImageSet:
        """This client's share of the pool (never the certification or validation sets)."""
        splits = load_splits(self.cfg.data)
        idx = client_indices(
            splits.pool.y, self.node.partition_id, self.node.num_partitions, self.cfg.data,
            self.cfg.seed,
        )  # fmt: skip
        return splits.pool.subset(idx)

    def model(self) -> nn.Module:
        """The global model, on the run's device."""
        spec = load_splits(self.cfg.data).spec
        net = build_model(self.cfg.model.name, spec)
        return load_record(net, self.global_arrays).to(self.device)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def generator(self, purpose: str) -> torch.Generator:
        """A generator seeded by run seed, round, partition and purpose."""
        return torch_generator(self.cfg.seed, purpose, self.server_round, self.node.partition_id)


def sgd_config(t: TrainConfig) -> SGDConfig:
    """The local optimiser settings of the run config."""
    return SGDConfig(t.local_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay)


def adversarial_perturb(t: TrainConfig, generator: torch.Generator) -> Perturb | None:
    """Madry PGD on every batch when `train.mode = pgd`, else None (plain SGD)."""
    if t.mode != "pgd":
        return None
    attack = PGDConfig(
        eps=t.adv_eps,
        steps=t.adv_steps,
        step_size=t.adv_step_size or None,
        random_start=t.adv_random_start,
    )
    return lambda model, x, y: pgd(model, x, y, attack, generator)


def _limit_threads() -> None:
    """Honour CERTFL_TORCH_THREADS (set by `certfl launch`, where many nodes share the cores)."""
    threads = os.environ.get("CERTFL_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def benign_update(job: LocalJob) -> tuple[ArrayRecord, MetricRecord]:
    """The benign role: local SGD or PGD adversarial training from the global model."""
    _limit_threads()
    model, data, t = job.model(), job.data(), job.cfg.train
    stats = train(
        model,
        data,
        sgd_config(t),
        job.generator("shuffle"),
        perturb=adversarial_perturb(t, job.generator("pgd")),
        device=job.device,
    )
    metrics = MetricRecord({"num-examples": len(data), "train-loss": stats.mean_loss})
    return model_to_record(model), metrics
