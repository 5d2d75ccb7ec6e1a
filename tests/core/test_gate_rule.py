"""The gate's acceptance rules: CFAT's ratios, growth, floors and warm-up; the calibrated rule's
window median, learned log tolerances, ceiling and warm-up; the state as a JSON value."""

from __future__ import annotations

import json
import math

from core.config import RunConfig
from core.gate_rule import (
    GateState,
    Measurement,
    decide,
    metric_names,
    remember,
    rule_bounds,
    with_initial,
)

REFERENCE = {
    "clean_acc": 0.90, "pgd_acc": 0.60, "cert_acc@0.1": 0.40, "cert_loss@0.1": 2.0,
    "cert_acc@0.2": 0.10, "cert_loss@0.2": 5.0,
}  # fmt: skip
INITIAL = {
    "clean_acc": 0.10, "pgd_acc": 0.0, "cert_acc@0.1": 0.0, "cert_loss@0.1": 5.0,
    "cert_acc@0.2": 0.0, "cert_loss@0.2": 12.0,
}  # fmt: skip


def _cfg(**flat: object):
    return RunConfig.from_flat({"gate.l-crt": "0.1,0.2", **flat}).gate


def _state(*accepted: dict[str, float], keep: int = 5) -> GateState:
    state = with_initial(GateState(), Measurement.of(0, INITIAL))
    for i, metrics in enumerate(accepted, start=1):
        state = remember(state, Measurement.of(i, metrics), keep)
    return state


def _cfat(**flat: object):
    return _cfg(**{"gate.rule": "cfat", **flat})


def test_cfat_candidate_within_thresholds_is_accepted() -> None:
    candidate = {k: v * 0.91 if "acc" in k else v * 1.09 for k, v in REFERENCE.items()}
    decision = decide(candidate, _state(REFERENCE), _cfat(), server_round=5)
    assert decision.accepted and not decision.warmup
    assert len(decision.checks) == 6 and decision.failed == []


def test_cfat_accuracy_drop_below_ratio_is_skipped_naming_the_metric() -> None:
    candidate = dict(REFERENCE, pgd_acc=0.60 * 0.89)
    decision = decide(candidate, _state(REFERENCE), _cfat(), server_round=5)
    assert not decision.accepted
    assert decision.failed == ["pgd_acc ratio"]


def test_cfat_certified_loss_growth_beyond_ten_percent_plus_slack_is_skipped() -> None:
    cfg, state = _cfat(), _state(REFERENCE)
    limit = 1.1 * 5.0 + cfg.loss_slack
    assert decide(dict(REFERENCE, **{"cert_loss@0.2": limit - 1e-6}), state, cfg, 5).accepted
    decision = decide(dict(REFERENCE, **{"cert_loss@0.2": limit + 1e-3}), state, cfg, 5)
    assert decision.failed == ["cert_loss@0.2 growth"]
    zero_ref = dict(REFERENCE, **{"cert_loss@0.1": 0.0})
    assert decide(dict(zero_ref, **{"cert_loss@0.1": 5e-4}), _state(zero_ref), cfg, 5).accepted


def test_cfat_warmup_checks_only_floors_then_compares_with_the_round0_model() -> None:
    cfg = _cfat(**{"gate.warmup-rounds": 3, "gate.min-clean-acc": 0.5})
    bad = dict(REFERENCE, pgd_acc=0.0, **{"cert_loss@0.1": 1e6})
    assert decide(bad, _state(REFERENCE), cfg, server_round=3).accepted  # warm-up
    assert not decide(bad, _state(REFERENCE), cfg, server_round=4).accepted
    low = dict(REFERENCE, clean_acc=0.4)
    decision = decide(low, _state(), cfg, server_round=1)
    assert decision.warmup and decision.failed == ["clean_acc floor"]
    # after the warm-up with nothing accepted, the reference is the initial model
    assert decide(bad, _state(), cfg, server_round=4).failed == ["cert_loss@0.1 growth"]


def test_only_configured_metrics_take_part() -> None:
    cfg = _cfat(**{"gate.metrics": "cert-loss", "gate.l-crt": "0.2"})
    assert metric_names(cfg) == ["cert_loss@0.2"]
    candidate = dict(REFERENCE, clean_acc=0.0, pgd_acc=0.0)
    assert decide(candidate, _state(REFERENCE), cfg, 5).accepted


def test_non_finite_metrics_fail_under_both_rules() -> None:
    candidate = dict(REFERENCE, **{"cert_loss@0.1": math.nan})
    assert decide(candidate, _state(REFERENCE), _cfat(), 5).failed == ["cert_loss@0.1 growth"]
    calibrated = decide(candidate, _state(REFERENCE), _cfg(), 5)
    assert not calibrated.accepted and "cert_loss@0.1 window" in calibrated.failed


def _benign_history(n: int) -> list[dict[str, float]]:
    """Accepted models whose metrics wobble by +-10% around REFERENCE."""
    wobble = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.1, 0.92]
    return [{k: v * wobble[i % len(wobble)] for k, v in REFERENCE.items()} for i in range(n)]


def test_calibrated_reference_is_the_window_median_and_tolerance_is_learned() -> None:
    cfg = _cfg(**{"gate.history": 7})
    state = _state(*_benign_history(7), keep=7)
    rb = rule_bounds("calibrated", state, cfg, server_round=8)
    assert not rb.warmup
    window = [w["cert_loss@0.1"] for w in _benign_history(7)[-5:]]
    loss = next(b for b in rb.bounds if b.metric == "cert_loss@0.1" and b.criterion == "window")
    assert math.isclose(loss.reference, sorted(window)[2])
    # tolerance = 2 x the largest log distance of one model's loss from the median before it
    # (0.9 after the median 1.05 of 1.0 and 1.1: log 1.05/0.9), inside [log 1.1, log 4]
    growth = (loss.bound + cfg.loss_slack) / (loss.reference + cfg.loss_slack)
    assert math.isclose(growth, (1.05 / 0.9) ** 2, rel_tol=1e-3)
    # accuracies: the reference is the best of the window, the tolerance 2 x the largest
    # distance from the best before (0.9 after 1.1)
    acc = next(b for b in rb.bounds if b.metric == "cert_acc@0.1" and b.criterion == "window")
    assert math.isclose(acc.reference, 0.40 * 1.1)
    bound = acc.reference * (0.9 / 1.1) ** 2 - cfg.acc_slack  # and the absolute allowance
    assert cfg.acc_slack > 0 and math.isclose(acc.bound, bound, rel_tol=1e-6)
    honest = dict(REFERENCE, **{"cert_loss@0.1": 2.0 * 1.15, "cert_acc@0.1": 0.40 * 0.85})
    assert decide(honest, state, cfg, 8).accepted
    masked = dict(REFERENCE, **{"cert_loss@0.1": 2.0 * 100})
    decision = decide(masked, state, cfg, 8)
    assert decision.failed == ["cert_loss@0.1 window", "cert_loss@0.1 ceiling"]
    # while fewer than `window` models were accepted the tolerance is the loosest
    young = rule_bounds("calibrated", _state(*_benign_history(3)), cfg, 4)
    assert young.warmup
    top = next(b for b in young.bounds if b.metric == "cert_loss@0.1" and b.criterion == "window")
    assert math.isclose((top.bound + cfg.loss_slack) / (top.reference + cfg.loss_slack), 4.0)


def test_calibrated_checks_round_one_against_the_initial_model_and_the_ceiling() -> None:
    cfg = _cfg()
    state = _state()
    rb = rule_bounds("calibrated", state, cfg, server_round=1)
    assert rb.warmup  # tolerances at their loosest while the window fills, but checked
    first = dict(REFERENCE, **{"cert_loss@0.1": 2.5})  # honest: below the untrained model's
    assert decide(first, state, cfg, 1).accepted
    masked = dict(REFERENCE, **{"cert_loss@0.1": 370.0})  # distilled, CFAT's hole
    assert not decide(masked, state, cfg, 1).accepted
    # within loss-factor-max of the initial model's 5.0 but above 2 x it: the ceiling holds
    assert decide(dict(first, **{"cert_loss@0.1": 15.0}), state, cfg, 1).failed == [
        "cert_loss@0.1 ceiling"
    ]


def test_a_one_point_drop_of_a_small_accuracy_does_not_stall_the_calibrated_rule() -> None:
    """CIFAR-10's early models certify 0-2 of 100 points: a candidate certifying none after a
    window whose best certified one passes (acc-slack), a real drop still fails."""
    tiny = dict(REFERENCE, **{"cert_acc@0.1": 0.01})
    state = _state(tiny, dict(tiny, **{"cert_acc@0.1": 0.0}))
    none = dict(tiny, **{"cert_acc@0.1": 0.0})
    assert decide(none, state, _cfg(), 3).accepted
    assert decide(none, state, _cfg(**{"gate.acc-slack": 0.0}), 3).failed == ["cert_acc@0.1 window"]
    good = dict(REFERENCE, **{"cert_acc@0.1": 0.40})
    assert decide(dict(good, **{"cert_acc@0.1": 0.05}), _state(good), _cfg(), 2).failed == [
        "cert_acc@0.1 window"
    ]


def test_no_single_accepted_model_moves_the_calibrated_reference() -> None:
    cfg = _cfg(**{"gate.loss-ceiling": 0, "gate.history": 6})
    history = _benign_history(5)
    outlier = dict(REFERENCE, **{"cert_loss@0.1": 2.0 * 3.9})  # just within loss-factor-max
    state = _state(*history, outlier, keep=6)
    loss = next(
        b for b in rule_bounds("calibrated", state, cfg, 7).bounds if b.metric == "cert_loss@0.1"
    )
    assert loss.reference < 2.0 * 1.11  # the median ignores the one outlier
    assert loss.bound <= (loss.reference + cfg.loss_slack) * cfg.loss_factor_max


def test_state_round_trips_through_json() -> None:
    state = _state(*_benign_history(3))
    state = remember(state, Measurement.of(9, REFERENCE), keep=3)
    again = GateState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    assert [m.round for m in again.accepted] == [2, 3, 9] and again.initial.round == 0
