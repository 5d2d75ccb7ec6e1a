"""Small real jobs for the attack policy tests: tiny MNIST partitions, an MLP, colluders run as
threads over a real channel directory, and the aggregate the server would compute."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from flwr.app import ArrayRecord

from attacks.collusion import Coalition, CollusionChannel
from attacks.updates import global_vector, layout_of, vector_model
from core.config import NodeConfig, RunConfig
from core.data import ImageSet, load_splits
from core.evasion import PGDConfig, pgd, pgd_evaluate
from core.job import LocalJob, LocalResult
from core.models import build_model
from core.params import flatten_record, model_to_record, state_to_record
from core.training import SGDConfig, evaluate, train
from strategies.aggregators import coordinate_median, weighted_mean

T = TypeVar("T")
NUM_PARTITIONS = 50
BASE = {
    "seed": 0,
    "model.name": "mlp",
    "data.n-cert": 100,
    "data.n-val": 500,
    "data.max-client-samples": 300,
    "train.clients-per-round": 5,
    "train.local-epochs": 1,
    "train.momentum": 0.0,
    "train.adv-eps": 0.1,
    "train.adv-steps": 5,
}
EPS = 0.1  # the L-inf budget of training and of the PGD evaluation


def config(**flat: Any) -> RunConfig:
    """The tiny run config with overrides as keywords: train__local_epochs=2 for
    train.local-epochs=2 (an `attack.*` key needs roles__attack naming a policy that reads it)."""
    keys = {k.replace("__", ".").replace("_", "-"): v for k, v in flat.items()}
    return RunConfig.from_flat({**BASE, **keys})


def make_job(cfg: RunConfig, pid: int, arrays: ArrayRecord, server_round: int = 1) -> LocalJob:
    """Partition `pid`'s job in `server_round` starting from the global model `arrays`."""
    node = NodeConfig.from_flat({"partition-id": pid, "num-partitions": NUM_PARTITIONS})
    return LocalJob(cfg, node, arrays, server_round)


def eval_set(cfg: RunConfig, n: int = 300) -> ImageSet:
    """The first `n` test images: where the tests measure models."""
    return load_splits(cfg.data).test.subset(slice(0, n))


def initial_arrays(cfg: RunConfig, sgd_epochs: int = 0) -> ArrayRecord:
    """A seeded model, optionally pre-trained by plain SGD on 1000 pool images."""
    splits = load_splits(cfg.data)
    model = build_model(cfg.model.name, splits.spec, seed=cfg.seed)
    if sgd_epochs:
        data = splits.pool.subset(slice(0, 1000))
        train(model, data, SGDConfig(sgd_epochs, 32, 0.05), torch.Generator().manual_seed(1))
    return model_to_record(model)


@functools.cache
def robust_arrays() -> ArrayRecord:
    """An adversarially trained global model (Madry PGD at EPS, 2000 pool images, 5 epochs)."""
    cfg = config()
    splits = load_splits(cfg.data)
    model = build_model(cfg.model.name, splits.spec, seed=0)
    gen = torch.Generator().manual_seed(0)
    attack = PGDConfig(eps=EPS, steps=5)
    train(
        model,
        splits.pool.subset(slice(0, 2000)),
        SGDConfig(5, 32, 0.1),
        gen,
        perturb=lambda m, x, y: pgd(m, x, y, attack, gen),
    )
    return model_to_record(model)


def run_colluders(
    root: Path, members: list[int], work: Callable[[int, Coalition], T], server_round: int = 1
) -> dict[int, T]:
    """Each member joins `server_round` of the channel at `root` and runs `work`, in threads."""
    channel = CollusionChannel(root, min_colluders=1, window_s=1.0, timeout_s=120)
    with ThreadPoolExecutor(len(members)) as pool:
        futures = {
            m: pool.submit(lambda m=m: work(m, channel.join(server_round, m))) for m in members
        }
        return {m: f.result() for m, f in futures.items()}


def update(job: LocalJob, result: LocalResult) -> torch.Tensor:
    """A reply as the aggregators see it: its flat model minus the global model."""
    return flatten_record(state_to_record(result.state), layout_of(job)) - global_vector(job)


def mean_model(job: LocalJob, updates: list[torch.Tensor]) -> torch.Tensor:
    """G + FedAvg (uniform weights) of the updates, flat."""
    rows = torch.stack(updates)
    return global_vector(job) + weighted_mean(rows, torch.ones(len(rows)))


def median_model(job: LocalJob, updates: list[torch.Tensor]) -> torch.Tensor:
    """G + coordinate-wise median of the updates, flat."""
    rows = torch.stack(updates)
    return global_vector(job) + coordinate_median(rows, torch.ones(len(rows)))


def accuracies(job: LocalJob, vector: torch.Tensor, data: ImageSet) -> tuple[float, float]:
    """Clean accuracy and PGD-10 accuracy at EPS of the flat model `vector` on `data`."""
    model = vector_model(job, vector)
    clean = evaluate(model, data).accuracy
    robust = pgd_evaluate(
        model, data, PGDConfig(eps=EPS, steps=10), 500, torch.Generator().manual_seed(2)
    ).accuracy
    return clean, robust


def loss(job: LocalJob, vector: torch.Tensor, data: ImageSet) -> float:
    """Mean cross-entropy of the flat model `vector` on `data`."""
    return evaluate(vector_model(job, vector), data).loss
