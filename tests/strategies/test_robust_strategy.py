"""The Flower adapter: per-reply validation, skipped rounds, preconditions, untrusted weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from core.config import ConfigError, RunConfig
from core.params import Layout, flatten_record, record_to_numpy
from strategies.robust import RobustStrategy, client_weights
from tests.conftest import tiny_template as _template
from tests.conftest import train_reply as _reply


def _strategy(**flat: object) -> RobustStrategy:
    cfg = RunConfig.from_flat({"train.clients-per-round": 5, **flat})
    return RobustStrategy(cfg, _template())


def _shifted(template: ArrayRecord, delta: float) -> dict[str, np.ndarray]:
    return {k: (v + delta).astype(v.dtype) for k, v in record_to_numpy(template).items()}


def test_malformed_replies_are_rejected_and_the_rest_aggregated() -> None:
    strategy = _strategy(**{"agg.rule": "mean"})
    template = _template()
    strategy.begin_round(1, template, sampled=10)
    good = [_reply(i, _shifted(template, 0.1 * (i + 1))) for i in range(3)]
    key = next(iter(record_to_numpy(template)))
    nan = _shifted(template, 0.0)
    nan[key] = nan[key].copy()
    nan[key].flat[0] = np.nan
    inf = _shifted(template, 0.0)
    inf[key] = np.full_like(inf[key], np.inf)
    wrong_shape = _shifted(template, 0.0)
    wrong_shape[key] = np.zeros((2, 2), dtype=np.float32)
    missing = _shifted(template, 0.0)
    del missing[key]
    bad = [
        _reply(10, nan),
        _reply(11, inf),
        _reply(12, wrong_shape),
        _reply(13, missing),
        _reply(14, None),
        _reply(15, _shifted(template, 5.0), n=None),
        _reply(16, _shifted(template, 5.0), n=-3),
    ]
    arrays, _ = strategy.aggregate_train(1, good + bad)
    report = strategy.last_report
    assert arrays is not None and report.aggregated
    assert sorted(f.node_id for f in report.failures) == list(range(10, 17))
    assert all(f.reason for f in report.failures)
    layout = Layout.of(record_to_numpy(template))
    expected = flatten_record(template, layout) + 0.2  # mean of the shifts 0.1, 0.2, 0.3
    torch.testing.assert_close(flatten_record(arrays, layout), expected, atol=1e-6, rtol=0)


def test_round_with_too_few_valid_replies_is_skipped() -> None:
    strategy = _strategy(**{"agg.rule": "krum", "agg.f": 1})  # Krum with f=1 needs K >= 5
    template = _template()
    strategy.begin_round(3, template, sampled=5)
    replies = [_reply(i, _shifted(template, 0.01 * i)) for i in range(4)]
    replies.append(_reply(9, None))
    arrays, _ = strategy.aggregate_train(3, replies)
    assert arrays is None
    assert not strategy.last_report.aggregated
    assert "needs 5" in strategy.last_report.skip_reason


def test_rule_precondition_fails_at_start_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"agg\.rule.*krum.*clients-per-round = 5"):
        _strategy(**{"agg.rule": "krum", "agg.f": 2})
    with pytest.raises(ConfigError, match=r"agg\.rule.*bulyan"):
        _strategy(**{"agg.rule": "bulyan", "agg.f": 1})


def test_reported_example_counts_are_capped() -> None:
    cfg = RunConfig.from_flat({"agg.weighting": "num-examples", "agg.weight-cap": 2.0}).agg
    counts = torch.tensor([100.0, 120.0, 80.0, 1e9], dtype=torch.float64)
    weights = client_weights(counts, cfg)
    assert weights.tolist() == pytest.approx([100.0, 120.0, 80.0, 2 * 110.0])
    uniform = RunConfig.from_flat({}).agg
    assert client_weights(counts, uniform).tolist() == [1.0] * 4


def test_sampling_depends_on_seed_round_and_connected_set_only() -> None:
    from strategies.robust import sample_nodes

    nodes = list(range(100, 120))
    chosen = sample_nodes(nodes, 5, seed=3, server_round=7)
    assert chosen == sample_nodes(nodes[::-1], 5, seed=3, server_round=7)
    assert len(set(chosen)) == 5 and set(chosen) <= set(nodes)
    by_round = {tuple(sample_nodes(nodes, 5, seed=3, server_round=r)) for r in range(1, 6)}
    by_seed = {tuple(sample_nodes(nodes, 5, seed=s, server_round=7)) for s in range(5)}
    assert len(by_round) > 1 and len(by_seed) > 1
    assert sorted(sample_nodes(nodes[:3], 5, seed=3, server_round=7)) == nodes[:3]
