"""DP baselines (FL-WBC Sec. 7.1): clipping, seeded noise, local DP, central DP in the strategy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord

from core.config import ConfigError, RunConfig
from core.params import Layout, flatten_record, record_to_numpy
from core.privacy import central_noise_std, clip_rows, local_dp, noise
from core.wire import NUM_EXAMPLES
from strategies.replies import CheckedReplies
from strategies.robust import RobustStrategy


def test_clip_rows_bounds_each_row_and_keeps_short_ones() -> None:
    x = torch.tensor([[30.0, 40.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = clip_rows(x, 5.0)
    torch.testing.assert_close(clipped, torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]))
    torch.testing.assert_close(clip_rows(torch.tensor([6.0, 8.0]), 5.0), torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_noise_has_the_asked_std_and_repeats_from_the_seed(kind: str) -> None:
    draw = noise((100_000,), 0.3, kind, torch.Generator().manual_seed(7))
    assert float(draw.std()) == pytest.approx(0.3, rel=0.02)
    assert abs(float(draw.mean())) < 0.01
    assert torch.equal(draw, noise((100_000,), 0.3, kind, torch.Generator().manual_seed(7)))


def test_local_dp_clips_then_adds_noise_of_std_z_times_clip() -> None:
    update = torch.full((50_000,), 1.0)  # norm ~224
    quiet = local_dp(update, 5.0, 0.0, "gaussian", torch.Generator().manual_seed(0))
    assert float(torch.linalg.vector_norm(quiet)) == pytest.approx(5.0, rel=1e-4)
    noisy = local_dp(update, 5.0, 0.01, "gaussian", torch.Generator().manual_seed(0))
    assert float((noisy - quiet).std()) == pytest.approx(0.05, rel=0.03)


def _strategy(mode: str, z: float) -> tuple[RobustStrategy, ArrayRecord]:
    cfg = RunConfig.from_flat(
        {"agg.rule": "mean", "train.clients-per-round": 4, "dp.mode": mode, "dp.clip": 1.0,
         "dp.noise-multiplier": z}
    )  # fmt: skip
    template = ArrayRecord({"w": Array(np.zeros(20_000, dtype=np.float32))})
    strategy = RobustStrategy(cfg, template)
    strategy.begin_round(1, template, sampled=4)
    return strategy, template


def test_central_dp_clips_every_update_and_noises_the_aggregate() -> None:
    models = torch.zeros(4, 20_000)
    models[0, 0], models[1, 1], models[2, 2], models[3, 3] = 10.0, 0.5, -3.0, 0.0
    checked = CheckedReplies([1, 2, 3, 4], models, torch.ones(4, dtype=torch.float64),
                             [MetricRecord({NUM_EXAMPLES: 1})] * 4, [])  # fmt: skip
    strategy, template = _strategy("central", 0.0)
    layout = Layout.of(record_to_numpy(template))
    step = flatten_record(strategy.aggregate_models(checked, 1), layout)
    torch.testing.assert_close(step[:4], torch.tensor([1.0, 0.5, -1.0, 0.0]) / 4)
    plain = flatten_record(_strategy("none", 0.0)[0].aggregate_models(checked, 1), layout)
    assert float(plain[0]) == pytest.approx(2.5)

    noisy_strategy, _ = _strategy("central", 2.0)
    noisy = flatten_record(noisy_strategy.aggregate_models(checked, 1), layout)
    expected_std = central_noise_std(1.0, 2.0, 4)
    assert expected_std == 0.5
    assert float((noisy - step)[4:].std()) == pytest.approx(expected_std, rel=0.03)


def test_bad_dp_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'dp\.mode' = 'global'.*'local'"):
        RunConfig.from_flat({"dp.mode": "global"})
    with pytest.raises(ConfigError, match=r"'dp\.clip' = 0"):
        RunConfig.from_flat({"dp.clip": 0})
    with pytest.raises(ConfigError, match=r"'fl-wbc\.s-means' = 'var'"):
        RunConfig.from_flat({"fl-wbc.s-means": "var"})
    assert math.isclose(RunConfig.from_flat({"dp.noise-multiplier": 0.5}).dp.noise_multiplier, 0.5)
