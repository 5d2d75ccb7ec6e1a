"""`CertificationGate`: wraps any Flower message-API strategy and skips every round whose
candidate model fails the acceptance rule (core/gate_rule.py), so that the global model
stays exactly as it was.

Before the first round the gate measures the model the run starts from (round 0), so that every
candidate, the first one included, is compared with a measured model. Each round it measures the
inner strategy's candidate in the server process (strategies/gate_measure.py: clean and PGD
accuracy on the validation set, zonotope certified accuracy and loss on the certification set;
neither set ever reaches a client) and produces a frozen `GateReport`. The inner strategy is
never modified. Its whole memory is one frozen `GateState` (`state_dict` / `load_state_dict`
give it as JSON), so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from core.config import GateConfig
from core.gate_rule import (
    Check,
    Decision,
    GateState,
    Measurement,
    judge,
    metric_names,
    remember,
    rule_bounds,
    with_initial,
)
from strategies.gate_measure import Measurer, MeasureResult

STATE_VERSION = 1


class RoundStrategy(Protocol):
    """What the gate needs of the strategy it wraps: Flower's message-API round methods
    (`flwr.serverapp.strategy.Strategy`, e.g. FedAvg, FedMedian, RobustStrategy)."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]: ...
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...
    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None: ...
    def summary(self) -> None: ...


@dataclass(frozen=True)
class ShadowVerdict:
    """Another rule's verdict on the same candidate, recorded but never enforced."""

    rule: str
    accepted: bool
    failed: tuple[str, ...]


@dataclass(frozen=True)
class GateReport:
    """The gate's round: verdict, every check, the candidate's metrics, timings."""

    round: int
    rule: str
    accepted: bool
    warmup: bool
    checks: tuple[Check, ...]
    metrics: Mapping[str, float]
    samples: Mapping[str, int]  # points behind each metric
    early: str  # why measuring stopped early ("" = in full)
    seconds: float  # the gate's time this round (measuring the initial model included)
    timings: Mapping[str, float]  # busy seconds per check, wall, initial (round-0 measure)
    shadow: tuple[ShadowVerdict, ...] = ()
    initial: Mapping[str, float] | None = None  # the round-0 model's metrics, when measured now

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(
            f"{check.metric} {check.criterion}" for check in self.checks if not check.passed
        )

    def to_record(self) -> dict[str, Any]:
        """The `gate` object of the round record (server/run_store.py)."""
        return {
            "rule": self.rule,
            "accepted": self.accepted,
            "warmup": self.warmup,
            "seconds": self.seconds,
            "metrics": dict(self.metrics),
            "samples": dict(self.samples),
            "early": self.early,
            "reference": {  # what each metric's relative bound derives from (not a ceiling's)
                check.metric: check.reference
                for check in self.checks
                if check.reference is not None and check.criterion not in ("ceiling", "floor")
            },
            "checks": [
                {
                    "metric": check.metric,
                    "value": check.value,
                    "reference": check.reference,
                    "bound": check.bound,
                    "criterion": check.criterion,
                    "passed": check.passed,
                }
                for check in self.checks
            ],  # fmt: skip
            "failed": list(self.failed),
            "timings": dict(self.timings),
            "shadow": [
                {"rule": s.rule, "accepted": s.accepted, "failed": list(s.failed)}
                for s in self.shadow
            ],
            "initial": None if self.initial is None else dict(self.initial),
        }


def decision_line(report: GateReport) -> str:
    """The one log line per gate decision: verdict, each metric beside its bound."""
    verdict = "accepted" if report.accepted else "SKIPPED"
    phase = " (warm-up)" if report.warmup else ""
    early = f" [early: {report.early}]" if report.early else ""
    checks = "; ".join(check.describe() for check in report.checks) or "no checks"
    shadow = "".join(f" | {s.rule}: {'accept' if s.accepted else 'skip'}" for s in report.shadow)
    return (
        f"[certfl] gate round {report.round} ({report.rule}): {verdict}{phase} in "
        f"{report.seconds:.1f}s{early} | {checks}{shadow}"
    )


class CertificationGate(Strategy):
    """Wraps `inner`: its candidate is measured and accepted or skipped.

    Parameters
    ----------
    inner : RoundStrategy
        Any Flower message-API strategy: samples clients and aggregates; never modified.
    measure : Measurer
        Produces the metrics the rule compares (strategies/gate_measure.py).
    cfg : GateConfig
        The rule (`gate.rule`), rules judged in the shadow (`gate.shadow-rules`), thresholds.
    """

    def __init__(self, inner: RoundStrategy, measure: Measurer, cfg: GateConfig) -> None:
        self.inner = inner
        self.measure = measure
        self.cfg = cfg
        self.state = GateState()
        self.last_report: GateReport | None = None
        self._initial_s: float | None = None  # set in the round that measured the initial model

    @property
    def rules(self) -> tuple[str, ...]:
        """The enforced rule first, then the shadow rules."""
        return (self.cfg.rule, *(r for r in self.cfg.shadow_rules if r != self.cfg.rule))

    def state_dict(self) -> dict[str, Any]:
        """The gate's whole memory as JSON-serialisable data."""
        return {"version": STATE_VERSION, "state": self.state.to_dict()}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`'s output: later decisions equal an uninterrupted run's."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(
                f"gate state version {d.get('version')!r} is not {STATE_VERSION}; cannot resume"
            )
        state = GateState.from_dict(d["state"])
        needed = set(metric_names(self.cfg))
        for m in (state.initial, *state.accepted):
            if m is not None and not needed <= dict(m.metrics).keys():
                missing = ", ".join(sorted(needed - dict(m.metrics).keys()))
                raise ValueError(f"gate state of round {m.round} lacks {missing}: saved with "
                                 "other gate.l-crt or gate.metrics; cannot resume")  # fmt: skip
        self.state = state

    def summary(self) -> None:
        self.inner.summary()
        gate = self.cfg
        log(INFO, "\t└──> certification gate: rule %s%s, L_crt %s, metrics %s, window %d, "
            "scheduler %s (%d workers, early verdict %s)", gate.rule,
            f" (shadow: {','.join(gate.shadow_rules)})" if gate.shadow_rules else "",
            ",".join(f"{e:g}" for e in gate.l_crt), ",".join(gate.metrics), gate.window,
            gate.scheduler, gate.workers, gate.early_verdict)  # fmt: skip

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Measure the global model first if nothing is measured yet (round 0), then sample."""
        if self.state.initial is None:
            start = time.perf_counter()
            measured = self.measure(arrays, 0)
            self.state = with_initial(self.state, Measurement.of(0, measured.metrics))
            self._initial_s = time.perf_counter() - start
            log(INFO, "[certfl] gate: measured the initial model in %.1fs: %s", self._initial_s,
                ", ".join(f"{k} {v:.4g}" for k, v in measured.metrics.items()))  # fmt: skip
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner candidate if it passes the rule; None (round skipped) otherwise."""
        self.last_report = None
        candidate, metrics = self.inner.aggregate_train(server_round, replies)
        if candidate is None:
            return None, metrics
        report = self.judge(candidate, server_round)
        self.last_report = report
        log(INFO if report.accepted else WARNING, "%s", decision_line(report))
        return (candidate if report.accepted else None), metrics

    def judge(self, candidate: ArrayRecord, server_round: int) -> GateReport:
        """Measure `candidate`, decide under every rule, update the state, return the report."""
        start = time.perf_counter()
        enforced = rule_bounds(self.cfg.rule, self.state, self.cfg, server_round)
        early_bounds = () if self.cfg.shadow_rules else enforced.bounds
        measured = self.measure(candidate, server_round, early_bounds)
        decisions = {
            rule: judge(measured.metrics, rule_bounds(rule, self.state, self.cfg, server_round))
            for rule in self.rules
        }
        if decisions[self.cfg.rule].accepted:
            entry = Measurement.of(server_round, measured.metrics)
            keep = max(self.cfg.history, self.cfg.window)
            self.state = remember(self.state, entry, keep)
        initial_s = self._initial_s or 0.0
        seconds = time.perf_counter() - start + initial_s
        report = _report(server_round, self.cfg.rule, decisions, measured, seconds, initial_s)
        if self._initial_s is not None and self.state.initial is not None:
            report = dataclasses.replace(report, initial=dict(self.state.initial.metrics))
        self._initial_s = None
        return report

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


def _report(
    server_round: int,
    rule: str,
    decisions: Mapping[str, Decision],
    measured: MeasureResult,
    seconds: float,
    initial_s: float,
) -> GateReport:
    enforced = decisions[rule]
    timings = dict(measured.seconds) | {"initial": initial_s}
    shadow = tuple(
        ShadowVerdict(r, d.accepted, tuple(d.failed)) for r, d in decisions.items() if r != rule
    )
    return GateReport(
        round=server_round,
        rule=rule,
        accepted=enforced.accepted,
        warmup=enforced.warmup,
        checks=enforced.checks,
        metrics=dict(measured.metrics),
        samples=dict(measured.samples),
        early=measured.early,
        seconds=seconds,
        timings=timings,
        shadow=shadow,
    )
