"""Local DP (FL-WBC Sec. 7.1 baseline): honest replies are clipped and noised, attacks are not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attacks.collusion import Coalition
from attacks.registry import policy
from client.local import benign_update
from core.config import NodeConfig, RunConfig
from core.data import load_splits
from core.job import LocalJob, LocalResult
from core.models import build_model
from core.params import model_to_record, record_to_state


def _job(data_dir: Path, z: float) -> LocalJob:
    cfg = RunConfig.from_flat({
        "data.dir": str(data_dir), "data.n-val": 100, "data.max-client-samples": 64,
        "model.name": "mlp", "train.mode": "sgd", "train.lr": 0.1, "train.batch-size": 16,
        "train.local-epochs": 1, "train.momentum": 0.0, "dp.mode": "local", "dp.clip": 0.01,
        "dp.noise-multiplier": z,
    })  # fmt: skip
    net = build_model("mlp", load_splits(cfg.data).spec, seed=0)
    return LocalJob(cfg, NodeConfig(partition_id=2, num_partitions=50), model_to_record(net), 1)


def _update_norm(job: LocalJob, reply: LocalResult) -> float:
    start, end = record_to_state(job.global_arrays), reply.state
    return float(torch.cat([(end[k] - start[k]).flatten() for k in start]).norm())


def test_honest_update_is_clipped_then_noised_and_attack_replies_are_left_alone(
    data_dir: Path,
) -> None:
    quiet = _job(data_dir, 0.0)
    assert _update_norm(quiet, benign_update(quiet)) == pytest.approx(0.01, rel=1e-3)
    noisy = _job(data_dir, 1.0)
    n_params = sum(v.numel() for v in record_to_state(noisy.global_arrays).values())
    # clip 0.01 plus noise of std z * clip = 0.01 per coordinate: norm ~ 0.01 * sqrt(P)
    expected = 0.01 * n_params**0.5
    assert _update_norm(noisy, benign_update(noisy)) == pytest.approx(expected, rel=0.05)
    attack = policy("targeted-poisoning").run(quiet, Coalition.alone(1, 2))
    assert _update_norm(quiet, attack) > 0.1
