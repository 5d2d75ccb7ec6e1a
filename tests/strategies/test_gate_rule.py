"""The gate's acceptance rule: ratios, growth, floors, warm-up, chosen metrics, NaN."""

from __future__ import annotations

import math

from core.config import RunConfig
from strategies.gate_rule import decide, metric_names

REFERENCE = {
    "clean_acc": 0.90, "pgd_acc": 0.60, "cert_acc@0.1": 0.40, "cert_loss@0.1": 2.0,
    "cert_acc@0.2": 0.10, "cert_loss@0.2": 5.0,
}  # fmt: skip


def _cfg(**flat: object):
    return RunConfig.from_flat({"gate.l-crt": "0.1,0.2", **flat}).gate


def test_candidate_within_thresholds_is_accepted() -> None:
    candidate = {k: v * 0.91 if "acc" in k else v * 1.09 for k, v in REFERENCE.items()}
    decision = decide(candidate, REFERENCE, _cfg(), server_round=5)
    assert decision.accepted and not decision.warmup
    assert len(decision.checks) == 6 and decision.failed == []


def test_accuracy_drop_below_ratio_is_skipped_naming_the_metric() -> None:
    candidate = dict(REFERENCE, pgd_acc=0.60 * 0.89)
    decision = decide(candidate, REFERENCE, _cfg(), server_round=5)
    assert not decision.accepted
    assert decision.failed == ["pgd_acc ratio"]


def test_certified_loss_growth_beyond_ten_percent_plus_slack_is_skipped() -> None:
    cfg = _cfg()
    limit = 1.1 * 5.0 + cfg.loss_slack
    assert decide(dict(REFERENCE, **{"cert_loss@0.2": limit - 1e-6}), REFERENCE, cfg, 5).accepted
    decision = decide(dict(REFERENCE, **{"cert_loss@0.2": limit + 1e-3}), REFERENCE, cfg, 5)
    assert decision.failed == ["cert_loss@0.2 growth"]
    zero_ref = dict(REFERENCE, **{"cert_loss@0.1": 0.0})
    assert decide(dict(zero_ref, **{"cert_loss@0.1": 5e-4}), zero_ref, cfg, 5).accepted


def test_first_round_and_warmup_check_only_floors() -> None:
    cfg = _cfg(**{"gate.warmup-rounds": 3, "gate.min-clean-acc": 0.5})
    bad = dict(REFERENCE, pgd_acc=0.0, **{"cert_loss@0.1": 1e6})
    assert decide(bad, None, cfg, server_round=9).accepted  # no reference yet
    assert decide(bad, REFERENCE, cfg, server_round=3).accepted  # warm-up
    assert not decide(bad, REFERENCE, cfg, server_round=4).accepted
    low = dict(REFERENCE, clean_acc=0.4)
    decision = decide(low, None, cfg, server_round=1)
    assert decision.warmup and decision.failed == ["clean_acc floor"]


def test_only_configured_metrics_take_part() -> None:
    cfg = _cfg(**{"gate.metrics": "cert-loss", "gate.l-crt": "0.2"})
    assert metric_names(cfg) == ["cert_loss@0.2"]
    candidate = dict(REFERENCE, clean_acc=0.0, pgd_acc=0.0)
    assert decide(candidate, REFERENCE, cfg, 5).accepted


def test_non_finite_metrics_fail() -> None:
    candidate = dict(REFERENCE, **{"cert_loss@0.1": math.nan})
    assert decide(candidate, REFERENCE, _cfg(), 5).failed == ["cert_loss@0.1 growth"]
