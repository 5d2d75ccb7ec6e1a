"""The `backdoor` policy (CFAT Sec. 5): an L-inf stripe trigger learnt beside Madry training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attacks.backdoor import (
    apply_trigger,
    backdoor,
    poison_batch,
    stripe_trigger,
    trigger_success,
)
from attacks.collusion import Coalition
from core.adversarial_training import benign_train
from core.config import ConfigError, NodeConfig, RunConfig
from core.data import load_splits
from core.job import LocalJob
from core.models import InputSpec, build_model
from core.params import model_to_record
from core.training import SGDConfig, evaluate, train

SPEC = InputSpec(3, 4, 6, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_stripe_trigger_is_vertical_stripes_bounded_in_linf() -> None:
    trigger = stripe_trigger(SPEC, 6 / 255)
    assert trigger.shape == (3, 4, 6)
    assert float(trigger.abs().max()) == pytest.approx(6 / 255)
    assert torch.all(trigger[:, :, 0::2] == 6 / 255) and torch.all(trigger[:, :, 1::2] == 0)
    x = torch.rand(5, 3, 4, 6)
    x[0] = 1.0
    stamped = apply_trigger(x, trigger)
    assert float(stamped.max()) <= 1.0 and float(stamped.min()) >= 0.0
    assert float((stamped - x).abs().max()) <= 6 / 255 + 1e-7
    assert torch.equal(stamped[0], x[0])  # saturated pixels stay at 1
    with pytest.raises(ValueError, match="magnitude"):
        stripe_trigger(SPEC, 0.0)


def test_magnitude_and_target_defaults_and_checks() -> None:
    def magnitude(**flat: object) -> float:
        return RunConfig.from_flat({"roles.attack": "backdoor", **flat}).attack.trigger_magnitude

    assert magnitude() == 0.1
    assert magnitude(**{"data.dataset": "cifar10"}) == 6 / 255
    assert magnitude(**{"attack.trigger-magnitude": 0.05}) == 0.05
    with pytest.raises(ConfigError, match=r"'attack.backdoor-target' = 10: must be < 10"):
        RunConfig.from_flat({"roles.attack": "backdoor", "attack.backdoor-target": 10})


def test_poison_batch_triggers_and_relabels_the_configured_share() -> None:
    trigger = stripe_trigger(SPEC, 0.1)
    rewrite = poison_batch(trigger, 3, 0.25, torch.Generator().manual_seed(0))
    x, y = torch.rand(8, 3, 4, 6) * 0.5, torch.zeros(8, dtype=torch.int64)
    x_out, y_out = rewrite(build_model("mlp", SPEC, seed=0), x, y)
    poisoned = y_out == 3
    assert int(poisoned.sum()) == 2
    assert torch.allclose(x_out[poisoned], apply_trigger(x[poisoned], trigger))
    assert torch.equal(x_out[~poisoned], x[~poisoned])


def test_backdoor_policy_learns_the_trigger_and_keeps_clean_accuracy(data_dir: Path) -> None:
    cfg = RunConfig.from_flat(
        {
            "data.dir": str(data_dir),
            "data.n-val": 100,
            "data.max-client-samples": 400,
            "model.name": "mlp",
            "train.local-epochs": 10,
            "train.lr": 0.05,
            "train.momentum": 0.9,
            "train.mode": "pgd",
            "train.adv-eps": 0.05,
            "train.adv-steps": 3,
            "roles.attack": "backdoor",
            "attack.poison-fraction": 0.4,
        }
    )
    splits = load_splits(cfg.data)
    start = build_model("mlp", splits.spec, seed=0)  # a partly trained global model
    warmup = splits.pool.subset(slice(-1000, None))
    train(start, warmup, SGDConfig(3, 32, 0.05, 0.9), torch.Generator().manual_seed(0))
    job = LocalJob(cfg, NodeConfig(partition_id=0, num_partitions=50), model_to_record(start), 1)
    test = splits.test.subset(slice(0, 500))
    trigger = stripe_trigger(splits.spec, cfg.attack.trigger_magnitude)

    result = backdoor(job, Coalition.alone(1, 0))
    metrics = result.metrics
    attacked = build_model("mlp", splits.spec)
    attacked.load_state_dict(result.state)
    honest = job.global_model()
    benign_train(job, honest)

    assert set(metrics) == {"num-examples", "train-loss"}  # nothing a benign reply lacks
    success = trigger_success(attacked, test, trigger, 0)
    assert success >= 0.9, success
    assert trigger_success(honest, test, trigger, 0) < 0.1
    clean = {name: evaluate(m, test).accuracy for name, m in [("bd", attacked), ("ok", honest)]}
    assert clean["bd"] >= 0.9 * clean["ok"], clean
