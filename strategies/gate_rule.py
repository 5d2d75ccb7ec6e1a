"""The gate's acceptance rule (CFAT Sec. 3), a pure function of the candidate's and the reference
model's metrics: accuracies may drop to `acc-ratio` of the reference, certified losses may grow
to (1 + loss-growth) times it plus `loss-slack`, and absolute floors hold in every round.

Metric names: `clean_acc`, `pgd_acc` (validation set), `cert_acc@<eps>`, `cert_loss@<eps>`
(certification set, one pair per L_crt).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import GateConfig


@dataclass(frozen=True)
class Check:
    """One criterion: the candidate's value against its bound (derived from the reference)."""

    metric: str
    value: float
    reference: float | None
    bound: float
    kind: str  # "min" (value >= bound) or "max" (value <= bound)
    criterion: str  # what set the bound: "ratio", "growth" or "floor"

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
class Decision:
    """The verdict on one candidate model, with every check that led to it."""

    accepted: bool
    checks: tuple[Check, ...]
    warmup: bool

    @property
    def failed(self) -> list[str]:
        return [f"{c.metric} {c.criterion}" for c in self.checks if not c.passed]


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


def _floor(cfg: GateConfig, metric: str) -> float:
    if metric == "clean_acc":
        return cfg.min_clean_acc
    if metric == "pgd_acc":
        return cfg.min_pgd_acc
    return cfg.min_cert_acc


def decide(
    metrics: Mapping[str, float],
    reference: Mapping[str, float] | None,
    cfg: GateConfig,
    server_round: int,
) -> Decision:
    """Accept or skip a candidate with `metrics` given the last accepted model's `reference`.

    Without a reference (nothing accepted yet) or within the warm-up rounds only the floors
    apply; the first accepted round then becomes the reference.
    """
    warmup = reference is None or server_round <= cfg.warmup_rounds
    checks = []
    for name in metric_names(cfg):
        value = float(metrics[name])
        ref = None if reference is None else float(reference[name])
        if name.startswith("cert_loss"):
            if not warmup:
                bound = (1 + cfg.loss_growth) * ref + cfg.loss_slack
                checks.append(Check(name, value, ref, bound, "max", "growth"))
            continue
        if _floor(cfg, name) > 0:
            checks.append(Check(name, value, ref, _floor(cfg, name), "min", "floor"))
        if not warmup:
            checks.append(Check(name, value, ref, cfg.acc_ratio * ref, "min", "ratio"))
    return Decision(all(c.passed for c in checks), tuple(checks), warmup)
