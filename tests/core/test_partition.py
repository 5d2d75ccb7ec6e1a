"""Partitioners: deterministic, disjoint, covering, and shaped as their scheme promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import DataConfig
from core.partition import client_indices, dirichlet, iid, partition, shards


def _labels(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.int64)


@settings(max_examples=30, deadline=None)
@given(
    per_client=st.integers(20, 60),
    parts=st.integers(1, 40),
    scheme=st.sampled_from(["iid", "dirichlet", "shards"]),
    seed=st.integers(0, 2**31),
)
def test_partitions_are_disjoint_cover_and_repeatable(
    per_client: int, parts: int, scheme: str, seed: int
) -> None:
    n = per_client * parts
    labels = _labels(n, seed=seed)
    cfg = DataConfig(partition=scheme, dirichlet_alpha=1.0, shards_per_client=1)
    first = partition(labels, parts, cfg, seed)
    again = partition(labels, parts, cfg, seed)
    assert len(first) == parts
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    joined = np.concatenate(first)
    assert np.array_equal(np.sort(joined), np.arange(n))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(p) for p in iid(_labels(1003), 10, seed=1)]
    assert max(sizes) - min(sizes) <= 1


def test_shards_give_each_client_few_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = shards(labels, 50, shards_per_client=2, seed=0)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert all(len(p) == 20 for p in parts)


def test_small_dirichlet_alpha_skews_labels_more_than_large() -> None:
    labels = _labels(20000)

    def mean_max_share(alpha: float) -> float:
        parts = dirichlet(labels, 20, alpha, seed=0)
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))

    assert mean_max_share(0.1) > 0.5 > mean_max_share(100.0)


def test_client_indices_cap_and_range() -> None:
    labels = torch.from_numpy(_labels(1000))
    cfg = DataConfig(max_client_samples=7)
    idx = client_indices(labels, 3, 10, cfg, seed=0)
    assert len(idx) == 7 and idx.dtype == torch.int64
    with pytest.raises(ValueError, match="partition-id 10"):
        client_indices(labels, 10, 10, cfg, seed=0)


def test_different_seeds_give_different_iid_partitions() -> None:
    labels = _labels(500)
    a, b = iid(labels, 5, seed=0), iid(labels, 5, seed=1)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
