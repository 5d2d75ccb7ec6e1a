"""The `edge-case` policy (Attack of the Tails Sec. 2): black-box, PGD, PGD with replacement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attacks.collusion import Coalition
from attacks.edge_case import attacker_set, edge_case, get_flat, project_l2, set_flat
from attacks.edge_case_data import load_edge_case
from core.config import ConfigError, DataConfig, NodeConfig, RunConfig
from core.data import DataNotFoundError, ImageSet, load_splits
from core.job import LocalJob
from core.models import build_model
from core.params import model_to_record
from core.training import SGDConfig, evaluate, train


def test_project_l2_keeps_points_inside_and_scales_points_outside() -> None:
    center = torch.tensor([1.0, -1.0, 0.0])
    inside = center + torch.tensor([0.3, 0.0, -0.4])  # distance 0.5
    assert project_l2(inside, center, 0.5) is inside
    outside = center + torch.tensor([3.0, 0.0, 4.0])  # distance 5
    projected = project_l2(outside, center, 2.0)
    torch.testing.assert_close(projected, center + torch.tensor([1.2, 0.0, 1.6]))


def test_flat_state_round_trips_every_float_entry_including_batchnorm_statistics() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    flat = get_flat(model)
    assert flat.numel() == 3 * 2 + 2 + 4 * 2  # weight, bias; BN weight, bias, mean, var
    set_flat(model, flat + 1.0)
    torch.testing.assert_close(get_flat(model), flat + 1.0)
    torch.testing.assert_close(model[1].running_var, torch.full((2,), 2.0))


def test_edge_case_data_and_the_authors_attacker_set(data_dir: Path) -> None:
    edge = load_edge_case(DataConfig(dir=str(data_dir)))
    assert edge.target == 1 and edge.train.x.shape == (660, 1, 28, 28) and len(edge.test) == 100
    assert torch.all(edge.test.y == 1)
    clean = ImageSet(torch.zeros(300, 1, 28, 28, dtype=torch.uint8), torch.full((300,), 5))
    gens = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    mixed = attacker_set(clean, edge, RunConfig.from_flat({}).attack, *gens)
    assert (int((mixed.y == 1).sum()), int((mixed.y == 5).sum())) == (66, 100)  # as the authors
    chosen = RunConfig.from_flat(
        {"roles.attack": "edge-case", "attack.edge-samples": 30, "attack.edge-fraction": 0.75}
    ).attack
    mixed = attacker_set(clean, edge, chosen, *gens)
    assert (int((mixed.y == 1).sum()), int((mixed.y == 5).sum())) == (30, 10)
    with pytest.raises(ConfigError, match="attack.edge-fraction"):
        RunConfig.from_flat({"attack.edge-fraction": 0.0})
    with pytest.raises(DataNotFoundError, match="no edge-case set"):
        load_edge_case(DataConfig(dataset="fashion-mnist", dir=str(data_dir)))


@pytest.fixture(scope="module")
def start(data_dir: Path) -> tuple[RunConfig, ImageSet, nn.Module]:
    """Flat run config, MNIST test subset and a partly trained mlp global model."""
    cfg = {
        "data.dir": str(data_dir),
        "data.n-val": 100,
        "data.max-client-samples": 400,
        "model.name": "mlp",
        "train.mode": "sgd",
        "train.local-epochs": 2,
        "train.lr": 0.05,
        "train.momentum": 0.9,
        "train.clients-per-round": 5,
        "roles.attack": "edge-case",
    }
    splits = load_splits(RunConfig.from_flat(cfg).data)
    model = build_model("mlp", splits.spec, seed=0)
    warmup = splits.pool.subset(slice(-1000, None))
    train(model, warmup, SGDConfig(3, 32, 0.05, 0.9), torch.Generator().manual_seed(0))
    return cfg, splits.test.subset(slice(0, 500)), model


def _attack(start: tuple, **overrides: object) -> nn.Module:
    """The edge-case reply of client 0 in round 1 with the given run config overrides."""
    flat, _, model = start
    cfg = RunConfig.from_flat(
        flat | {f"attack.{k.replace('_', '-')}": v for k, v in overrides.items()}
    )
    job = LocalJob(cfg, NodeConfig(partition_id=0, num_partitions=50), model_to_record(model), 1)
    result = edge_case(job, Coalition.alone(1, 0))
    assert set(result.metrics) == {"num-examples", "train-loss"}  # nothing a benign reply lacks
    attacked = job.global_model()
    attacked.load_state_dict(result.state)
    return attacked


def test_edge_case_attack_raises_the_target_accuracy_on_ardis_sevens(start: tuple) -> None:
    flat, test, model = start
    ardis = load_edge_case(RunConfig.from_flat(flat).data).test
    before = evaluate(model, ardis).accuracy  # share of ARDIS test '7's classified '1'
    for mode in ("blackbox", "pgd"):
        attacked = _attack(start, edge_mode=mode)
        after = evaluate(attacked, ardis).accuracy
        assert after >= before + 0.3 and after >= 0.7, (mode, before, after)
        assert evaluate(attacked, test).accuracy >= 0.5  # still a working MNIST model


def test_pgd_modes_reply_inside_the_norm_ball(start: tuple) -> None:
    _, _, model = start
    center, delta = get_flat(model), 0.5
    free = get_flat(_attack(start, edge_mode="blackbox", edge_delta=delta))
    assert float((free - center).norm()) > 2 * delta  # so the ball does constrain
    for mode in ("pgd", "pgd-replace"):
        reply = get_flat(_attack(start, edge_mode=mode, edge_delta=delta))
        assert float((reply - center).norm()) <= delta * (1 + 1e-5), mode
        assert float((reply - center).norm()) >= 0.9 * delta, mode  # it uses its budget
