"""CRFL's server step: norm clipping, the rho_t / sigma_t schedule, the strategy adapter and the
`crfl.*` config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import ConfigError, RunConfig
from core.data import load_splits
from core.models import build_model
from core.params import Layout, flatten_record, model_to_record, record_to_numpy
from core.seeds import torch_generator
from server.app import build_strategy
from strategies.crfl import (
    CRFLStrategy,
    clip_and_perturb,
    clip_norm,
    clip_threshold,
    server_sigma,
)
from strategies.gate import CertificationGate
from strategies.robust import RobustStrategy
from tests.conftest import tiny_template, train_reply


def test_clip_norm_projects_onto_the_ball_and_keeps_the_direction() -> None:
    w = torch.tensor([3.0, 4.0])  # norm 5
    torch.testing.assert_close(clip_norm(w, 2.5), torch.tensor([1.5, 2.0]))
    inside = clip_norm(w, 10.0)
    assert torch.equal(inside, w) and inside is not w


def test_schedule_grows_rho_to_its_cap_and_drops_the_noise_in_the_last_round() -> None:
    c = RunConfig.from_flat({"crfl.rho": 5.0, "crfl.rho-start": 2.0, "crfl.rho-growth": 0.5}).crfl
    assert [clip_threshold(t, c) for t in (0, 1, 4, 6, 100)] == [2.0, 2.5, 4.0, 5.0, 5.0]
    assert [server_sigma(t, 10, c) for t in (1, 9, 10)] == [0.01, 0.01, 0.0]


def test_perturbation_has_the_configured_std() -> None:
    w = torch.zeros(200_000)
    out = clip_and_perturb(w, 1.0, 0.05, torch.Generator().manual_seed(0))
    assert float(out.std()) == pytest.approx(0.05, rel=0.01)
    assert abs(float(out.mean())) < 0.001


def test_strategy_clips_and_perturbs_the_aggregate_and_releases_the_last_round_unnoised() -> None:
    cfg = RunConfig.from_flat({
        "train.clients-per-round": 3, "agg.rule": "mean", "num-rounds": 4, "crfl.enabled": True,
        "crfl.sigma": 0.02, "crfl.rho": 3.0, "crfl.rho-start": 1.0, "crfl.rho-growth": 0.5,
    })  # fmt: skip
    template = tiny_template()
    layout = Layout.of(record_to_numpy(template))
    strategy = CRFLStrategy(cfg, template)
    replies = [
        train_reply(i, {k: v + 0.5 * (i + 1) for k, v in record_to_numpy(template).items()})
        for i in range(3)
    ]
    mean = flatten_record(template, layout) + 1.0  # the mean of the shifts 0.5, 1, 1.5
    assert float(mean.norm()) > 3.0

    strategy.begin_round(2, template, sampled=3)
    arrays, _ = strategy.aggregate_train(2, replies)
    assert arrays is not None
    got = flatten_record(arrays, layout)
    # written out by hand: the mean scaled to norm rho_2 = 1 + 0.5 * 2, plus the round's noise
    draw = torch.randn(mean.shape, generator=torch_generator(cfg.seed, "crfl-noise", 2))
    expected = mean * (2.0 / float(mean.norm())) + 0.02 * draw
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    noise = got - mean * (2.0 / float(mean.norm()))
    assert float(noise.std()) == pytest.approx(0.02, rel=0.05)

    strategy.begin_round(4, template, sampled=3)
    final, _ = strategy.aggregate_train(4, replies)
    assert final is not None
    clipped = mean * (3.0 / float(mean.norm()))  # rho_4 = 1 + 0.5 * 4 = 3, no noise
    torch.testing.assert_close(flatten_record(final, layout), clipped, atol=1e-5, rtol=0)
    assert float(flatten_record(final, layout).norm()) == pytest.approx(3.0, rel=1e-5)


def test_server_uses_the_crfl_step_when_enabled_also_under_the_gate(data_dir: Path) -> None:
    flat = {"data.dir": str(data_dir), "data.n-cert": 10, "data.n-val": 10}
    splits = load_splits(RunConfig.from_flat(flat).data)
    template = model_to_record(build_model("conv-small", splits.spec, seed=0))
    cpu = torch.device("cpu")
    plain = build_strategy(RunConfig.from_flat({**flat, "gate.enabled": False}), template, splits,
                           cpu)  # fmt: skip
    assert type(plain) is RobustStrategy
    crfl = {**flat, "crfl.enabled": True}
    alone = build_strategy(RunConfig.from_flat({**crfl, "gate.enabled": False}), template, splits,
                           cpu)  # fmt: skip
    assert type(alone) is CRFLStrategy
    gated = build_strategy(RunConfig.from_flat({**crfl, "gate.enabled": True}), template, splits,
                           cpu)  # fmt: skip
    assert isinstance(gated, CertificationGate) and type(gated.inner) is CRFLStrategy


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("crfl.bound", "wilson", "'hoeffding' or 'clopper-pearson'"),
        ("crfl.sigma", 0.0, "greater than 0"),
        ("crfl.alpha", 1.0, "less than 1"),
        ("crfl.n-copies", 0, "greater than or equal to 1"),
    ],
)
def test_bad_crfl_values_name_the_key_and_what_is_allowed(
    key: str, value: object, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' = .*{fragment}"):
        RunConfig.from_flat({key: value})
