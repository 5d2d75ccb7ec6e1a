"""One client's task in one round: its config, data partition and the global model it starts from.

Every client policy (benign, FL-WBC, each attack) receives a `LocalJob`; the pieces they all need
(the partition, a fresh copy of the global model, seeded generators) are built here once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord
from torch import nn

from core.config import NodeConfig, RunConfig, TrainConfig
from core.data import ImageSet, Splits, load_splits
from core.device import resolve_device
from core.models import build_model
from core.params import load_record
from core.partition import client_indices
from core.seeds import derive_seed
from core.training import SGDConfig
from core.wire import NUM_EXAMPLES


@dataclass(frozen=True)
class LocalResult:
    """What a client policy produces in one round: the model's state and the reply's metrics.

    Policies return values, not Flower records; the ClientApp wraps them for the wire.
    """

    state: dict[str, torch.Tensor]  # the full state_dict, on the CPU
    metrics: dict[str, float]  # `num-examples` plus what the policy reports


@dataclass(frozen=True)
class LocalJob:
    """Everything a client policy needs for one round."""

    cfg: RunConfig
    node: NodeConfig
    global_arrays: ArrayRecord
    server_round: int

    @functools.cached_property
    def splits(self) -> Splits:
        return load_splits(self.cfg.data)

    @functools.cached_property
    def data(self) -> ImageSet:
        """This client's share of the pool (never the certification or validation sets)."""
        idx = client_indices(
            self.splits.pool.y, self.node.partition_id, self.node.num_partitions, self.cfg.data,
            self.cfg.seed,
        )  # fmt: skip
        return self.splits.pool.subset(idx)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def global_model(self) -> nn.Module:
        """A fresh copy of the global model on the run's device."""
        net = build_model(self.cfg.model.name, self.splits.spec)
        return load_record(net, self.global_arrays).to(self.device)

    def seed(self, purpose: str) -> int:
        """A seed determined by run seed, round, partition and purpose."""
        return derive_seed(self.cfg.seed, purpose, self.server_round, self.node.partition_id)

    def generator(self, purpose: str) -> torch.Generator:
        """A generator seeded by run seed, round, partition and purpose."""
        return torch.Generator().manual_seed(self.seed(purpose))

    def reply(self, model: nn.Module, **metrics: float) -> LocalResult:
        """The reply: the model's state and `num-examples` (the partition size) plus `metrics`."""
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return LocalResult(state, {NUM_EXAMPLES: len(self.data), **metrics})


def sgd_config(t: TrainConfig) -> SGDConfig:
    """The local optimiser settings of the run config."""
    return SGDConfig(t.local_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay)
