"""The gate's acceptance rules: pure functions of the gate's state and the candidate's metrics.

They live in `core` (no Flower) because two sides read them: the certification gate
(strategies/gate.py) enforces them, and the adaptive attack (attacks/adaptive_cert.py), which
knows the defender's rule, aims at the bounds they give.

Metric names: `clean_acc`, `pgd_acc` (validation set), `cert_acc@<eps>`, `cert_loss@<eps>`
(certification set, one pair per L_crt). A rule first derives its bounds from the state alone
(`rule_bounds`: what the candidate must reach, before it is measured, so that the measurer can
stop as soon as the verdict is known), then `judge` compares the candidate with them.

The state (`GateState`) is one frozen value: the measurement of the model the run started from
(round 0) and the models accepted since, most recent last. Tolerances the calibrated rule learns
are a function of that history, so the state is all a resumed gate needs. Every rule reads the
same history (the models actually accepted), so a shadow rule's verdict is what it would have
said about this candidate given the federation's real past.

`cfat` (CFAT Sec. 3). Reference: the last accepted model. Accept when every accuracy is at least
`acc-ratio` times its reference and every certified loss at most (1 + loss-growth) times its
reference plus `loss-slack`; in the first `warmup-rounds` rounds only the absolute floors.

`calibrated`. The accepted models in order, v_{m,0} the round-0 model's value of metric m
(kept while fewer than `gate.history` models were accepted), on a log scale:

    ref_m(i)  = over the `gate.window` accepted models before i: the median of a certified loss
                (robust to outliers), the largest value of an accuracy (the best recent model)
    spread_m  = max over the history of |log v_{m,i} - log ref_m(i)|  (how far honest rounds
                strayed from the reference they met, either way)
    tol_m     = clamp(spread-factor * spread_m, tightest, loosest)  once `window` were accepted,
              = loosest                                               before (warm-up)
    accuracy:        v_m >= ref_m * exp(-tol_m) - a,   exp(-tol) in [acc-ratio-floor, acc-ratio]
    certified loss:  v_m + s <= (ref_m + s) * exp(tol_m),  exp(tol) in [1 + loss-growth,
                                                                        loss-factor-max]
    ceiling:         v_m <= loss-ceiling * v_{m,0}  (certified losses, every round)
    floors:          accuracies >= gate.min-*-acc   (every round)

with s = `loss-slack`, a = `acc-slack` and accuracies clipped below at 1e-3 inside the
logarithms. The accuracy allowance a is for small sets, where a ratio of one point is large: an
early CIFAR-10 model certifies 0-2 of N_cert = 100 points, and without a every candidate
certifying none after one that certified 1 was skipped, so training stalled for good
(`bench/gate_cost.py --dataset cifar10 --rounds 10`, rounds 5-10). Assumptions:
certified loss moves by tens of percent between honest rounds and by orders of magnitude under
gradient masking (measured: README); honest training does not raise it above `loss-ceiling`
times the untrained model's (it lowers it); the median of W moves only once ceil(W / 2) models in
the window moved, so a single accepted model cannot move the loss reference, and a chain of
accepted models raises it by at most `loss-factor-max` per ceil(W / 2) accepted rounds, never past
the ceiling; accuracies are bounded, and a drop from the best recent model is what an attack on
them shows. What the defender gives up: an honest model whose certified loss jumps past tol_max
or the ceiling, or whose accuracy drops past tol_max, is skipped; an attack that stays within the
tolerances (a slow chain, a weak model early in training, or the adaptive attack matching the
certified metrics) passes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import GateConfig

ACC_LOG_FLOOR = 1e-3  # accuracies below this count as this inside the logarithms


@dataclass(frozen=True)
class Measurement:
    """One model's metrics, as measured by the gate in `round` (0: the initial model)."""

    round: int
    metrics: tuple[tuple[str, float], ...]  # sorted by name

    @classmethod
    def of(cls, round_: int, metrics: Mapping[str, float]) -> Measurement:
        return cls(int(round_), tuple(sorted((k, float(v)) for k, v in metrics.items())))

    def value(self, name: str) -> float:
        return dict(self.metrics)[name]

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "metrics": dict(self.metrics)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        return cls.of(d["round"], d["metrics"])


@dataclass(frozen=True)
class GateState:
    """Everything the rules remember: the round-0 measurement and the accepted models (at most
    `keep` of them, most recent last). JSON round trip: `to_dict` / `from_dict`."""

    initial: Measurement | None = None
    accepted: tuple[Measurement, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "initial": None if self.initial is None else self.initial.to_dict(),
            "accepted": [m.to_dict() for m in self.accepted],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateState:
        initial = None if d.get("initial") is None else Measurement.from_dict(d["initial"])
        return cls(initial, tuple(Measurement.from_dict(m) for m in d.get("accepted", ())))


def with_initial(state: GateState, measurement: Measurement) -> GateState:
    """The state once the model the run starts from has been measured."""
    return GateState(measurement, state.accepted)


def remember(state: GateState, measurement: Measurement, keep: int) -> GateState:
    """The state after `measurement`'s model was accepted: the last `keep` are kept."""
    return GateState(state.initial, (*state.accepted, measurement)[-max(keep, 1) :])


@dataclass(frozen=True)
class Bound:
    """What one metric of the candidate must reach: value >= bound ("min") or <= ("max")."""

    metric: str
    bound: float
    kind: str  # "min" or "max"
    criterion: str  # what set it: "ratio", "growth", "floor", "window", "ceiling"
    reference: float | None = None

    def admits(self, value: float) -> bool:
        """Whether `value` passes (NaN never does)."""
        return value >= self.bound if self.kind == "min" else value <= self.bound


@dataclass(frozen=True)
class Check:
    """One criterion: the candidate's value against its bound (derived from the reference)."""

    metric: str
    value: float
    reference: float | None
    bound: float
    kind: str  # "min" (value >= bound) or "max" (value <= bound)
    criterion: str  # what set the bound: "ratio", "growth", "floor", "window", "ceiling"

    @property
    def passed(self) -> bool:
        return self.value >= self.bound if self.kind == "min" else self.value <= self.bound

    def describe(self) -> str:
        ref = "-" if self.reference is None else f"{self.reference:.4g}"
        op = ">=" if self.kind == "min" else "<="
        mark = "ok" if self.passed else "FAIL"
        bound = f"{self.criterion} {op} {self.bound:.4g}"
        return f"{self.metric} {self.value:.4g} (ref {ref}, {bound}) {mark}"


@dataclass(frozen=True)
class RuleBounds:
    """A rule's bounds for the next candidate, and whether it is still warming up."""

    rule: str
    bounds: tuple[Bound, ...]
    warmup: bool


@dataclass(frozen=True)
class Decision:
    """The verdict on one candidate model, with every check that led to it."""

    accepted: bool
    checks: tuple[Check, ...]
    warmup: bool

    @property
    def failed(self) -> list[str]:
        return [f"{check.metric} {check.criterion}" for check in self.checks if not check.passed]


def metric_names(cfg: GateConfig) -> list[str]:
    """The metrics taking part in the rule, in a stable order."""
    names = []
    if "clean-acc" in cfg.metrics:
        names.append("clean_acc")
    if "pgd-acc" in cfg.metrics:
        names.append("pgd_acc")
    for eps in cfg.l_crt:
        if "cert-acc" in cfg.metrics:
            names.append(f"cert_acc@{eps:g}")
        if "cert-loss" in cfg.metrics:
            names.append(f"cert_loss@{eps:g}")
    return names


def is_loss(metric: str) -> bool:
    return metric.startswith("cert_loss")


def _floor(cfg: GateConfig, metric: str) -> float:
    if metric == "clean_acc":
        return cfg.min_clean_acc
    if metric == "pgd_acc":
        return cfg.min_pgd_acc
    return cfg.min_cert_acc


def _floors(cfg: GateConfig) -> list[Bound]:
    return [
        Bound(m, _floor(cfg, m), "min", "floor")
        for m in metric_names(cfg)
        if not is_loss(m) and _floor(cfg, m) > 0
    ]


def cfat_bound(metric: str, reference: float, cfg: GateConfig) -> Bound:
    """CFAT Sec. 3's bound on `metric` given its `reference` (the last accepted model's value):
    a certified loss at most (1 + loss-growth) * reference + loss-slack ("growth"), an accuracy
    at least acc-ratio * reference ("ratio").

    >>> from core.config import GateConfig
    >>> cfg = GateConfig(acc_ratio=0.9, loss_growth=0.1, loss_slack=0.05)
    >>> b = cfat_bound("cert_loss@0.1", 2.0, cfg)
    >>> (b.kind, b.criterion, round(b.bound, 6))  # 1.1 * 2.0 + 0.05
    ('max', 'growth', 2.25)
    >>> b = cfat_bound("pgd_acc", 0.5, cfg)
    >>> (b.kind, b.criterion, round(b.bound, 6))  # 0.9 * 0.5
    ('min', 'ratio', 0.45)
    """
    if is_loss(metric):
        bound = (1 + cfg.loss_growth) * reference + cfg.loss_slack
        return Bound(metric, bound, "max", "growth", reference)
    return Bound(metric, cfg.acc_ratio * reference, "min", "ratio", reference)


def cfat_bounds(
    initial: Measurement | None, history: Sequence[Measurement], cfg: GateConfig, server_round: int
) -> RuleBounds:
    """CFAT Sec. 3 against the last accepted model (the initial one until one is accepted);
    floors only in the first `warmup-rounds` rounds."""
    last = history[-1] if history else initial
    warmup = last is None or server_round <= cfg.warmup_rounds
    bounds = _floors(cfg)
    if not warmup:
        assert last is not None
        bounds += [cfat_bound(m, last.value(m), cfg) for m in metric_names(cfg)]
    return RuleBounds("cfat", tuple(bounds), warmup)


def _log(metric: str, value: float, slack: float) -> float:
    return math.log(value + slack) if is_loss(metric) else math.log(max(value, ACC_LOG_FLOOR))


def tolerance(metric: str, spread_: float, cfg: GateConfig, learned: bool) -> float:
    """tol_m of the calibrated rule: spread-factor x `spread_` clamped to the metric's range
    [tightest, loosest]; the loosest while the tolerance is not yet `learned`.

    >>> from core.config import GateConfig
    >>> cfg = GateConfig(spread_factor=2.0, loss_growth=0.1, loss_factor_max=4.0)
    >>> round(tolerance("cert_loss@0.1", 0.2, cfg, True), 3)  # 2 x 0.2
    0.4
    >>> round(tolerance("cert_loss@0.1", 0.0, cfg, True), 3)  # log 1.1, the tightest
    0.095
    >>> round(tolerance("cert_loss@0.1", 0.2, cfg, False), 3)  # log 4, the loosest
    1.386
    """
    if is_loss(metric):
        lo, hi = math.log1p(cfg.loss_growth), math.log(cfg.loss_factor_max)
    else:
        lo, hi = -math.log(cfg.acc_ratio), -math.log(cfg.acc_ratio_floor)
    hi = max(hi, lo)
    return min(max(cfg.spread_factor * spread_, lo), hi) if learned else hi


def _sequence(initial: Measurement | None, history: Sequence[Measurement], keep: int) -> list:
    """The accepted models in order, the round-0 one first while the history is not full."""
    head = [initial] if initial is not None and len(history) < keep else []
    return [*head, *history]


def reference(metric: str, values: Sequence[float]) -> float:
    """The calibrated rule's reference of a window: the median of certified losses (one model
    cannot move it), the best (largest) accuracy (bounded by 1, and a drop from the best recent
    model is what an attack shows; a median lags behind early training's fast rise)."""
    return statistics.median(values) if is_loss(metric) else max(values)


def spread(metric: str, sequence: Sequence[Measurement], window: int, slack: float) -> float:
    """The largest log distance of an accepted model's `metric` from the reference of the
    `window` models accepted before it, either way: how far honest rounds strayed from the
    reference they met (early training's fast rise counts, and keeps tolerances loose then).

    >>> ms = [Measurement.of(i, {"cert_loss@0.1": v}) for i, v in enumerate([5.0, 2.0, 2.2, 2.4])]
    >>> round(spread("cert_loss@0.1", ms[1:], 2, 0.0), 3)  # 2.4 against median(2.0, 2.2)
    0.134
    >>> ms = [Measurement.of(i, {"pgd_acc": v}) for i, v in enumerate([0.8, 0.9, 0.85])]
    >>> round(spread("pgd_acc", ms, 2, 0.0), 3)  # 0.9 against max(0.8)
    0.118
    """
    steps = [0.0]
    for i in range(1, len(sequence)):
        ref = reference(metric, [m.value(metric) for m in sequence[max(0, i - window) : i]])
        value = sequence[i].value(metric)
        steps.append(abs(_log(metric, value, slack) - _log(metric, ref, slack)))
    return max(steps)


def calibrated_bounds(
    initial: Measurement | None, history: Sequence[Measurement], cfg: GateConfig, server_round: int
) -> RuleBounds:
    """The calibrated rule (module docstring): window reference, learned log tolerance,
    ceiling."""
    sequence = _sequence(initial, history, cfg.history)
    bounds = _floors(cfg)
    if not sequence:  # nothing measured yet: the gate measures round 0 first, so floors only
        return RuleBounds("calibrated", tuple(bounds), True)
    learned = len(history) >= cfg.window
    s = cfg.loss_slack
    for m in metric_names(cfg):
        ref = reference(m, [w.value(m) for w in sequence[-cfg.window :]])
        tol = tolerance(m, spread(m, sequence, cfg.window, s), cfg, learned)
        if is_loss(m):
            bounds.append(Bound(m, (ref + s) * math.exp(tol) - s, "max", "window", ref))
            if initial is not None and cfg.loss_ceiling > 0:
                top = cfg.loss_ceiling * initial.value(m)
                bounds.append(Bound(m, top, "max", "ceiling", initial.value(m)))
        else:
            bounds.append(Bound(m, ref * math.exp(-tol) - cfg.acc_slack, "min", "window", ref))
    return RuleBounds("calibrated", tuple(bounds), not learned)


RuleFn = Callable[[Measurement | None, Sequence[Measurement], GateConfig, int], RuleBounds]
RULES: dict[str, RuleFn] = {"cfat": cfat_bounds, "calibrated": calibrated_bounds}


def rule_bounds(rule: str, state: GateState, cfg: GateConfig, server_round: int) -> RuleBounds:
    """`rule`'s bounds for the candidate of `server_round`, from the state alone."""
    return RULES[rule](state.initial, state.accepted, cfg, server_round)


def judge(metrics: Mapping[str, float], rb: RuleBounds) -> Decision:
    """Compare the candidate's `metrics` with every bound: accepted when all pass."""
    checks = tuple(
        Check(b.metric, float(metrics[b.metric]), b.reference, b.bound, b.kind, b.criterion)
        for b in rb.bounds
    )
    return Decision(all(check.passed for check in checks), checks, rb.warmup)


def decide(
    metrics: Mapping[str, float],
    state: GateState,
    cfg: GateConfig,
    server_round: int,
    rule: str | None = None,
) -> Decision:
    """Accept or skip a candidate with `metrics` under `rule` (default `cfg.rule`)."""
    return judge(metrics, rule_bounds(rule or cfg.rule, state, cfg, server_round))
