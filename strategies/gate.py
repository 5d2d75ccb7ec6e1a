"""`CertificationGate`: wraps a strategy and skips every round whose candidate model fails the
acceptance rule (strategies/gate_rule.py), so that the global model stays exactly as it was.

The candidate is measured in the server process: clean and PGD accuracy on the validation set,
and zonotope certified accuracy and certified loss at each L_crt on the certification set
(certify/). Neither set ever reaches a client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log
from torch import nn

from attacks.evasion import PGDConfig, pgd_evaluate
from certify import certify_dataset
from core.config import RunConfig
from core.data import ImageSet
from core.params import load_record
from core.seeds import torch_generator
from core.training import evaluate
from strategies.gate_rule import Decision, decide
from strategies.robust import RobustStrategy, RoundReport


@dataclass
class CandidateMeasurer:
    """Measures a model (loaded into `model`) on the validation and certification sets."""

    model: nn.Module
    val: ImageSet
    cert: ImageSet
    cfg: RunConfig
    device: torch.device

    @property
    def l_adv(self) -> float:
        return self.cfg.gate.l_adv

    def __call__(self, arrays: ArrayRecord, server_round: int) -> dict[str, float]:
        """clean_acc, pgd_acc, and cert_acc@eps / cert_loss@eps for every L_crt."""
        g = self.cfg.gate
        load_record(self.model, arrays)
        clean = evaluate(self.model, self.val, g.batch_size, device=self.device)
        attack = PGDConfig(eps=self.l_adv, steps=g.pgd_steps, restarts=g.pgd_restarts)
        generator = torch_generator(self.cfg.seed, "gate-pgd", server_round)
        adv = pgd_evaluate(self.model, self.val, attack, g.batch_size, generator, self.device)
        metrics = {"clean_acc": clean.accuracy, "pgd_acc": adv.accuracy}
        metrics |= certification_metrics(
            self.model, self.cert, g.l_crt, g.method, g.budget_mb, g.sound_fp, self.device
        )
        return metrics


def certification_metrics(
    model: nn.Module,
    data: ImageSet,
    radii: Iterable[float],
    method: str = "zonotope",
    budget_mb: int = 256,
    sound_fp: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """`cert_acc@<eps>` and `cert_loss@<eps>` (CFAT Eq. 1 and 3) of `model` on `data`."""
    x, y = data.tensors(device)
    metrics = {}
    for eps in radii:
        result = certify_dataset(
            model, x, y, eps, method=method, budget_bytes=budget_mb * 2**20, sound_fp=sound_fp
        )
        metrics[f"cert_acc@{eps:g}"] = result.certified_accuracy
        metrics[f"cert_loss@{eps:g}"] = float(result.certified_loss)
    return metrics


def decision_line(server_round: int, decision: Decision, seconds: float) -> str:
    """The one log line per gate decision: verdict, each metric beside its reference."""
    verdict = "accepted" if decision.accepted else "SKIPPED"
    phase = " (warm-up: floors only)" if decision.warmup else ""
    checks = "; ".join(c.describe() for c in decision.checks) or "no checks"
    return f"[certfl] gate round {server_round}: {verdict}{phase} in {seconds:.1f}s | {checks}"


class CertificationGate(Strategy):
    """Wraps `inner`: its candidate is measured and accepted or skipped (CFAT Sec. 3).

    Parameters
    ----------
    inner : RobustStrategy
        Samples clients and aggregates; its `last_report` gets the gate's decision.
    measure : CandidateMeasurer
        Produces the metrics the rule compares.
    cfg : RunConfig
        The `gate.*` section holds the rule's thresholds.
    """

    def __init__(self, inner: RobustStrategy, measure: CandidateMeasurer, cfg: RunConfig) -> None:
        self.inner = inner
        self.measure = measure
        self.cfg = cfg
        self.reference: dict[str, float] | None = None

    @property
    def last_report(self) -> RoundReport:
        """The inner strategy's report of the current round, with the gate's decision in it."""
        return self.inner.last_report

    def summary(self) -> None:
        self.inner.summary()
        g = self.cfg.gate
        log(INFO, "\t└──> certification gate: L_crt %s, L_adv %g, metrics %s, acc-ratio %g, "
            "loss-growth %g, warm-up %d", ",".join(f"{e:g}" for e in g.l_crt), self.measure.l_adv,
            ",".join(g.metrics), g.acc_ratio, g.loss_growth, g.warmup_rounds)  # fmt: skip

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner candidate if it passes the rule; None (round skipped) otherwise."""
        candidate, metrics = self.inner.aggregate_train(server_round, replies)
        if candidate is None:
            return None, metrics
        start = time.perf_counter()
        measured = self.measure(candidate, server_round)
        decision = decide(measured, self.reference, self.cfg.gate, server_round)
        seconds = time.perf_counter() - start
        report = self.inner.last_report
        report.gate = {
            "accepted": decision.accepted,
            "warmup": decision.warmup,
            "seconds": seconds,
            "metrics": measured,
            "reference": self.reference,
            "checks": [
                {
                    "metric": c.metric,
                    "value": c.value,
                    "reference": c.reference,
                    "bound": c.bound,
                    "criterion": c.criterion,
                    "passed": c.passed,
                }
                for c in decision.checks
            ],  # fmt: skip
            "failed": decision.failed,
        }
        log(INFO if decision.accepted else WARNING, "%s",
            decision_line(server_round, decision, seconds))  # fmt: skip
        if not decision.accepted:
            report.aggregated = False
            report.skip_reason = "gate: " + ", ".join(decision.failed)
            return None, metrics
        self.reference = measured
        return candidate, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)
