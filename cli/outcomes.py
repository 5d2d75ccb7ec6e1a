"""Outcomes: the numbers a report shows for one finished run, named by a short spec.

A spec is either `<reducer>:<metric>` over the run's round records (rounds.jsonl, schema in
server/run_store.py), e.g. `final:clean_acc`, or a named outcome such as `attacks-blocked`.
Attack rounds come from the colluders' ground truth (ground_truth.jsonl), which only evaluation
reads. An outcome that does not apply to a run (no attack, no gate, metric not measured) is None.

Reducers over `metrics[<metric>]` of the global model after each round:
    final             the last round
    max, min, mean    over rounds 1.. (round 0 when there is no other)
    before-attack     the round before the first attack round
    attack            mean over the attack rounds
    after-attack-max  max over the rounds from the first attack round on
    candidate-attack  mean over the attack rounds of the gate's measurement of the candidate
                      (`gate.metrics`), accepted or not
Named outcomes: see `NAMED`. `clean-cost` and `objective` need the other arms of the experiment
and are computed in cli/results.py.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.mitigation import adversarial_rounds, mitigation_rounds

if TYPE_CHECKING:
    from cli.crfl_certify import SmoothedCertificate

REDUCERS = (
    "final", "max", "min", "mean", "before-attack", "attack", "after-attack-max",
    "candidate-attack",
)  # fmt: skip
DERIVED = ("clean-cost", "objective")
CRFL_FILE = "crfl_certify.json"


@dataclass(frozen=True)
class RunRecord:
    """A finished run as read back from its directory."""

    run_dir: Path
    config: Mapping[str, Any]
    rounds: Sequence[Mapping[str, Any]]
    ground_truth: Sequence[Mapping[str, Any]]
    wall_s: float | None
    crfl: Mapping[str, Any] | None = None  # crfl_certify.json, when the run has one

    @cached_property
    def attack_rounds(self) -> list[int]:
        """Rounds in which at least one colluder attacked."""
        return adversarial_rounds(self.ground_truth)

    @property
    def skipped_rounds(self) -> list[int]:
        """Rounds whose candidate model was not accepted (gate or too few replies)."""
        return [int(r["round"]) for r in self.rounds if r["round"] > 0 and not r["aggregated"]]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of `path`; [] when it does not exist."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_run(run_dir: Path) -> RunRecord:
    """Read a run directory (config.json, rounds.jsonl, ground_truth.jsonl, done, crfl)."""
    done = run_dir / "done"
    crfl = run_dir / CRFL_FILE
    return RunRecord(
        run_dir=run_dir,
        config=json.loads((run_dir / "config.json").read_text()),
        rounds=read_jsonl(run_dir / "rounds.jsonl"),
        ground_truth=read_jsonl(run_dir / "ground_truth.jsonl"),
        wall_s=float(done.read_text().split()[0]) if done.is_file() else None,
        crfl=json.loads(crfl.read_text()) if crfl.is_file() else None,
    )


@dataclass(frozen=True)
class Outcome:
    """A parsed spec: a reducer over a metric, or a named outcome with an optional argument."""

    spec: str
    kind: str  # a reducer, a named outcome, or a derived one
    arg: str = ""  # the metric of a reducer, the radius of crfl-certified@r


def parse_outcome(spec: str) -> Outcome:
    """Parse an outcome spec; ValueError saying what is allowed otherwise.

    >>> parse_outcome("final:cert_loss@0.1")
    Outcome(spec='final:cert_loss@0.1', kind='final', arg='cert_loss@0.1')
    >>> parse_outcome("crfl-certified@0.02").arg
    '0.02'
    """
    if ":" in spec:
        kind, metric = spec.split(":", 1)
        if kind in REDUCERS and metric:
            return Outcome(spec, kind, metric)
        raise ValueError(f"outcome {spec!r}: reducer {kind!r} unknown; allowed: {REDUCERS}")
    name, _, arg = spec.partition("@")
    if name in NAMED_WITH_ARG and arg:
        float(arg)  # a radius
        return Outcome(spec, name, arg)
    if (name in NAMED or name in DERIVED) and not arg:
        return Outcome(spec, name)
    allowed = [*NAMED, *DERIVED, *(f"{n}@<radius>" for n in NAMED_WITH_ARG)]
    raise ValueError(
        f"outcome {spec!r} unknown; allowed: <reducer>:<metric> with a reducer of {REDUCERS}, "
        f"or one of {allowed}"
    )


def outcome_value(spec: str, run: RunRecord) -> float | None:
    """The value of outcome `spec` for `run` (None when it does not apply). Derived outcomes
    (`clean-cost`, `objective`) are not per run: ValueError."""
    o = parse_outcome(spec)
    if o.kind in DERIVED:
        raise ValueError(f"outcome {spec!r} needs the whole experiment (cli/results.py)")
    if o.kind in REDUCERS:
        return _reduce(o.kind, o.arg, run)
    if o.kind in NAMED_WITH_ARG:
        return NAMED_WITH_ARG[o.kind](run, float(o.arg))
    return NAMED[o.kind](run)


def _metric(record: Mapping[str, Any], metric: str) -> float | None:
    value = record.get("metrics", {}).get(metric)
    return None if value is None else float(value)


def _reduce(kind: str, metric: str, run: RunRecord) -> float | None:
    rounds = list(run.rounds)
    if not rounds:
        return None
    by_round = {int(r["round"]): r for r in rounds}
    attacks = [t for t in run.attack_rounds if t in by_round]
    if kind == "final":
        return _metric(rounds[-1], metric)
    if kind == "candidate-attack":
        gated = [by_round[t].get("gate") for t in attacks]
        return _mean([(g or {}).get("metrics", {}).get(metric) for g in gated])
    if kind in ("before-attack", "attack", "after-attack-max") and not attacks:
        return None
    if kind == "before-attack":
        before = by_round.get(attacks[0] - 1)
        return None if before is None else _metric(before, metric)
    if kind == "attack":
        return _mean([_metric(by_round[t], metric) for t in attacks])
    if kind == "after-attack-max":
        return _max([_metric(r, metric) for r in rounds if r["round"] >= attacks[0]])
    trained = [r for r in rounds if r["round"] > 0] or rounds
    values = [_metric(r, metric) for r in trained]
    return {"max": _max, "min": _min, "mean": _mean}[kind](values)


def _present(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _mean(values: Sequence[float | None]) -> float | None:
    present = _present(values)
    return statistics.fmean(present) if present else None


def _max(values: Sequence[float | None]) -> float | None:
    present = _present(values)
    return max(present) if present else None


def _min(values: Sequence[float | None]) -> float | None:
    present = _present(values)
    return min(present) if present else None


def attack_round_count(run: RunRecord) -> float:
    """How many rounds had an attack."""
    return float(len(run.attack_rounds))


def attacks_blocked(run: RunRecord) -> float | None:
    """Share of the attack rounds whose candidate was not accepted (None: no attack)."""
    if not run.attack_rounds:
        return None
    skipped = set(run.skipped_rounds)
    return sum(t in skipped for t in run.attack_rounds) / len(run.attack_rounds)


def benign_skipped(run: RunRecord) -> float:
    """Rounds without an attack whose candidate was not accepted (false alarms of the gate)."""
    attacks = set(run.attack_rounds)
    return float(sum(t not in attacks for t in run.skipped_rounds))


def mean_mitigation_rounds(run: RunRecord) -> float | None:
    """FL-WBC's attack mitigation rounds (server/mitigation.py), mean over the attack rounds;
    inf when an attack was not mitigated before the run or the next attack ended."""
    if not run.attack_rounds:
        return None
    results = mitigation_rounds(run.rounds, run.attack_rounds)
    if any(m.rounds is None for m in results):
        return math.inf
    return statistics.fmean(m.rounds for m in results)


def wall_seconds(run: RunRecord) -> float | None:
    """The run's wall time as its `done` file records it."""
    return run.wall_s


def _train_seconds(run: RunRecord, attacked: bool) -> float | None:
    attacks = set(run.attack_rounds)
    return _mean(
        [r["timings"]["train_s"] for r in run.rounds
         if r["round"] > 0 and (r["round"] in attacks) == attacked]
    )  # fmt: skip


def attack_train_seconds(run: RunRecord) -> float | None:
    """Mean training time of the attack rounds: the slowest reply, here the attacker's."""
    return _train_seconds(run, attacked=True)


def benign_train_seconds(run: RunRecord) -> float | None:
    """Mean training time of the rounds without an attack."""
    return _train_seconds(run, attacked=False)


def _crfl_clean(run: RunRecord) -> SmoothedCertificate | None:
    """The clean test points' certificates of a run's crfl_certify.json."""
    if run.crfl is None:
        return None
    from cli.crfl_certify import as_certificate

    return as_certificate(run.crfl["clean"])


def crfl_certified(run: RunRecord, radius: float) -> float | None:
    """CRFL: share of the clean test points certified at `radius` (crfl_certify.json)."""
    cert = _crfl_clean(run)
    return None if cert is None else cert.certified(radius)


def crfl_certified_accuracy(run: RunRecord, radius: float) -> float | None:
    """CRFL: share of the clean test points predicted correctly and certified at `radius`."""
    cert = _crfl_clean(run)
    return None if cert is None else cert.certified_accuracy(radius)


def crfl_smoothed_accuracy(run: RunRecord) -> float | None:
    """CRFL: accuracy of the smoothed classifier on the clean test points."""
    cert = _crfl_clean(run)
    return None if cert is None else cert.certified_accuracy(0.0)


def crfl_median_radius(run: RunRecord) -> float | None:
    """CRFL: median certified radius over the clean test points."""
    cert = _crfl_clean(run)
    return None if cert is None else float(cert.radius.median())


def crfl_backdoor(run: RunRecord) -> float | None:
    """CRFL: the smoothed classifier's backdoor success on triggered test points."""
    if run.crfl is None:
        return None
    return run.crfl.get("smoothed_backdoor_success")


NAMED: dict[str, Callable[[RunRecord], float | None]] = {
    "attack-rounds": attack_round_count,
    "attacks-blocked": attacks_blocked,
    "benign-skipped": benign_skipped,
    "mitigation-rounds": mean_mitigation_rounds,
    "wall-s": wall_seconds,
    "attack-train-s": attack_train_seconds,
    "benign-train-s": benign_train_seconds,
    "crfl-smoothed-acc": crfl_smoothed_accuracy,
    "crfl-median-radius": crfl_median_radius,
    "crfl-backdoor": crfl_backdoor,
}
NAMED_WITH_ARG: dict[str, Callable[[RunRecord, float], float | None]] = {
    "crfl-certified": crfl_certified,
    "crfl-certified-acc": crfl_certified_accuracy,
}

# Column headers people read: metric names, then how a reducer phrases them.
METRIC_NAMES = {
    "clean_acc": "clean acc",
    "pgd_acc": "PGD acc",
    "pgd_t_acc": "PGD acc at T",
    "backdoor_success": "backdoor success",
    "edge_case_acc": "edge-case target acc",
    "tp_confidence": "D_M confidence",
    "tp_accuracy": "D_M accuracy",
    "cert_acc": "cert acc",
    "cert_loss": "cert loss",
}
REDUCER_PHRASES = {
    "final": "{}",
    "max": "max {}",
    "min": "min {}",
    "mean": "mean {}",
    "before-attack": "{} before the attack",
    "attack": "{} after attack rounds",
    "after-attack-max": "max {} from the attack on",
    "candidate-attack": "{} of attacked candidates (gate)",
}
LABELS = {
    "attack-rounds": "attack rounds",
    "attacks-blocked": "attack rounds skipped",
    "benign-skipped": "benign rounds skipped",
    "mitigation-rounds": "mitigation rounds",
    "wall-s": "wall time (s)",
    "attack-train-s": "attack round train time (s)",
    "benign-train-s": "benign round train time (s)",
    "clean-cost": "clean-accuracy cost",
    "objective": "attack objective",
    "crfl-smoothed-acc": "smoothed acc",
    "crfl-median-radius": "median radius",
    "crfl-backdoor": "smoothed backdoor success",
}


def metric_name(metric: str) -> str:
    """A metric as people read it.

    >>> metric_name("cert_loss@0.1"), metric_name("pgd_t_acc"), metric_name("new_metric")
    ('cert loss @0.1', 'PGD acc at T', 'new_metric')
    """
    base, at, radius = metric.partition("@")
    return METRIC_NAMES.get(base, base) + (f" @{radius}" if at else "")


def label(spec: str) -> str:
    """A column header for `spec`.

    >>> label("final:cert_loss@0.1"), label("attack:pgd_t_acc"), label("crfl-certified@0.02")
    ('cert loss @0.1', 'PGD acc at T after attack rounds', 'certified @0.02')
    """
    if spec in LABELS:
        return LABELS[spec]
    o = parse_outcome(spec)
    if o.kind in REDUCER_PHRASES:
        return REDUCER_PHRASES[o.kind].format(metric_name(o.arg))
    what = "certified" if o.kind == "crfl-certified" else "certified acc"
    return f"{what} @{o.arg}"
