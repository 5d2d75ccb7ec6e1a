"""targeted-poisoning (FL-WBC Eq. 3): D_M is recomputable, and the poisoned model serves it."""

from __future__ import annotations

from pathlib import Path

import torch

from attacks.collusion import Coalition
from attacks.registry import policy
from attacks.targeted_poisoning import (
    boosted,
    malicious_dataset,
    misclassification,
    poisoned_train,
)
from core.config import DataConfig, NodeConfig, RunConfig
from core.data import load_splits
from core.data import test_order as seeded_test_order
from core.job import LocalJob
from core.models import build_model
from core.params import model_to_record, record_to_state
from core.training import SGDConfig, evaluate, train
from server.threat_metrics import targeted_poisoning_metrics


def test_d_m_is_seeded_mislabelled_and_outside_the_evaluation_subset(data_dir: Path) -> None:
    splits = load_splits(DataConfig(dir=str(data_dir), n_val=100))
    d_m = malicious_dataset(splits.test, 10, 10, seed=3)
    again = malicious_dataset(splits.test, 10, 10, seed=3)
    assert torch.equal(d_m.x, again.x) and torch.equal(d_m.y, again.y)
    index = seeded_test_order(len(splits.test), 3)[-10:]
    assert torch.equal(d_m.x, splits.test.x[index])
    assert bool((d_m.y != splits.test.y[index]).all())
    assert not set(index.tolist()) & set(seeded_test_order(len(splits.test), 3)[:1000].tolist())
    assert not torch.equal(malicious_dataset(splits.test, 10, 10, seed=4).x, d_m.x)


def test_poisoned_model_misclassifies_d_m_confidently_and_keeps_clean_accuracy(
    data_dir: Path,
) -> None:
    splits = load_splits(DataConfig(dir=str(data_dir), n_val=100))
    data, test = splits.pool.subset(slice(0, 600)), splits.test.subset(slice(0, 500))
    d_m = malicious_dataset(splits.test, 1, splits.spec.num_classes, seed=0)
    sgd = SGDConfig(epochs=5, batch_size=32, lr=0.1)
    honest = build_model("mlp", splits.spec, seed=0)
    train(honest, data, sgd, torch.Generator().manual_seed(0))
    poisoned = build_model("mlp", splits.spec, seed=0)
    poisoned_train(poisoned, data, d_m, 0.8, sgd, torch.Generator().manual_seed(0))

    assert misclassification(honest, d_m).confidence < 0.1
    hit = misclassification(poisoned, d_m)
    assert hit.confidence > 0.9 and hit.accuracy == 1.0
    assert evaluate(poisoned, test).accuracy > evaluate(honest, test).accuracy - 0.05


def test_boosting_scales_the_update() -> None:
    start = torch.nn.Linear(3, 2)
    model = torch.nn.Linear(3, 2)
    update = model.weight.detach() - start.weight.detach()
    boosted(model, start, 4.0)
    torch.testing.assert_close(model.weight.detach(), start.weight.detach() + 4.0 * update)


def _job(data_dir: Path, **overrides: object) -> LocalJob:
    cfg = RunConfig.from_flat({
        "data.dir": str(data_dir), "data.n-val": 100, "data.max-client-samples": 96,
        "model.name": "mlp", "train.mode": "sgd", "train.lr": 0.05, "train.batch-size": 16,
        "train.local-epochs": 1, "train.momentum": 0.0, "roles.attack": "targeted-poisoning",
        "attack.tp-n-images": 2, **overrides,
    })  # fmt: skip
    net = build_model("mlp", load_splits(cfg.data).spec, seed=0)
    return LocalJob(cfg, NodeConfig(partition_id=0, num_partitions=50), model_to_record(net), 2)


def test_registered_policy_boosts_its_update_and_the_server_metric_sees_d_m(
    data_dir: Path,
) -> None:
    run = policy("targeted-poisoning").run
    plain_job = _job(data_dir)
    plain = run(plain_job, Coalition.alone(2, 0)).state
    boosted = run(_job(data_dir, **{"attack.tp-boost": True, "attack.boost": 3.0}),
                  Coalition.alone(2, 0))  # fmt: skip
    start, p, b = record_to_state(plain_job.global_arrays), plain, boosted.state
    for key in start:
        torch.testing.assert_close(b[key], start[key] + 3.0 * (p[key] - start[key]))
    assert boosted.metrics["num-examples"] == 96

    splits = load_splits(plain_job.cfg.data)
    model = build_model("mlp", splits.spec)
    model.load_state_dict(plain)
    subset = splits.test.subset(slice(0, 100))
    measured = targeted_poisoning_metrics(model, subset, plain_job.cfg, torch.device("cpu"), 2)
    d_m = malicious_dataset(splits.test, 2, splits.spec.num_classes, plain_job.cfg.seed)
    assert measured["tp_confidence"] == misclassification(model, d_m).confidence
    assert set(measured) == {"tp_confidence", "tp_accuracy"}
