"""Seeded, deterministic partitioners of the clients' pool: IID, Dirichlet(alpha), label shards.

A partition is a list of index tensors into the pool, computed from the labels alone (a few
hundred KB of int64 for 500 clients), so every process rebuilds the same assignment and keeps
one copy of the images. `client_indices` caches the assignment per process.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from core.config import DataConfig


def iid(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """A seeded random permutation cut into `num_partitions` near-equal parts."""
    rng = np.random.default_rng(seed)
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_partitions)]


def dirichlet(
    labels: np.ndarray, num_partitions: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Per class, split its points among clients in proportions drawn from Dir(alpha).

    Small alpha gives skewed label distributions (Hsu et al. 2019). Draws are repeated (at most
    100 times, seeded) until every client holds at least `min_size` points.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(labels) < num_partitions * min_size:
        raise ValueError(
            f"{len(labels)} points cannot give {num_partitions} clients {min_size} each"
        )
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for label in classes:
            idx = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_partitions, alpha))) * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts[:-1])):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ValueError(
        f"Dirichlet(alpha={alpha}) left a client with fewer than {min_size} points after 100 "
        "draws; raise data.dirichlet-alpha or use fewer clients"
    )


def shards(
    labels: np.ndarray, num_partitions: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """FL-WBC App. C / McMahan et al.: sort by label, cut into equal shards, deal k per client."""
    num_shards = num_partitions * shards_per_client
    if num_shards > len(labels):
        raise ValueError(f"{num_shards} shards requested from only {len(labels)} points")
    by_label = np.argsort(labels, kind="stable")
    pieces = np.array_split(by_label, num_shards)
    order = np.random.default_rng(seed).permutation(num_shards)
    return [
        np.sort(
            np.concatenate(
                [pieces[s] for s in order[i * shards_per_client : (i + 1) * shards_per_client]]
            )
        )
        for i in range(num_partitions)
    ]


def partition(
    labels: np.ndarray, num_partitions: int, cfg: DataConfig, seed: int
) -> list[np.ndarray]:
    """The partition `cfg.partition` names, over the pool's labels."""
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")
    if cfg.partition == "iid":
        return iid(labels, num_partitions, seed)
    if cfg.partition == "dirichlet":
        return dirichlet(labels, num_partitions, cfg.dirichlet_alpha, seed)
    return shards(labels, num_partitions, cfg.shards_per_client, seed)


@functools.lru_cache(maxsize=8)
def _cached_partition(
    labels_bytes: bytes, num_partitions: int, cfg: DataConfig, seed: int
) -> tuple[np.ndarray, ...]:
    labels = np.frombuffer(labels_bytes, dtype=np.int64)
    return tuple(partition(labels, num_partitions, cfg, seed))


def client_indices(
    labels: torch.Tensor, partition_id: int, num_partitions: int, cfg: DataConfig, seed: int
) -> torch.Tensor:
    """Indices into the pool of client `partition_id`, capped at `data.max-client-samples`."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside [0, {num_partitions})")
    parts = _cached_partition(labels.numpy().astype(np.int64).tobytes(), num_partitions, cfg, seed)
    idx = parts[partition_id]
    if cfg.max_client_samples:
        idx = idx[: cfg.max_client_samples]
    return torch.from_numpy(np.array(idx, dtype=np.int64))
