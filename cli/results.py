"""An experiment's results: every arm's outcomes over its seeds, and `results.json`.

Per run, each outcome spec the report needs is evaluated (cli/outcomes.py); per arm, the values
over seeds become a `Stat`. Two outcomes need the other arms: `clean-cost` is the baseline arm's
mean final clean accuracy minus the run's (`report.baseline`, e.g. no attack under FedAvg), and
`objective` is the outcome named by the arm's attack level (`objective`, e.g. backdoor success),
so that one heat map can show each attack's own goal.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli.outcomes import RunRecord, outcome_value, parse_outcome
from cli.scenario import Arm, Level, Plan

CLEAN = "final:clean_acc"


@dataclass(frozen=True)
class Stat:
    """One outcome of one arm over its seeds."""

    mean: float
    std: float  # sample standard deviation (0 for one seed)
    n: int
    values: tuple[float, ...]


def summarize(values: Iterable[float | None]) -> Stat | None:
    """Mean, sample std and count of the values that are not None (None when there are none).

    >>> s = summarize([0.5, None, 0.7])
    >>> round(s.mean, 6), round(s.std, 6), s.n, s.values
    (0.6, 0.141421, 2, (0.5, 0.7))
    >>> summarize([None]) is None
    True
    """
    present = tuple(float(v) for v in values if v is not None)
    if not present:
        return None
    mean = statistics.fmean(present)
    finite = all(math.isfinite(v) for v in present)
    std = statistics.stdev(present) if len(present) > 1 and finite else 0.0
    return Stat(mean, std, len(present), present)


@dataclass(frozen=True)
class ArmResult:
    """An arm's runs and its outcomes over seeds."""

    arm: Arm
    label: str
    run_ids: tuple[str, ...]  # finished runs
    failed: tuple[str, ...]  # runs that did not finish
    outcomes: Mapping[str, Stat | None]
    objective: str = ""  # the spec behind `objective`, when the arm has an attack level
    success: str = "higher"  # which direction of `objective` means the attack worked


def report_specs(plan: Plan) -> list[str]:
    """Every outcome spec the report of `plan` shows, in order, without repeats."""
    r = plan.scenario.report
    specs = [*r.table, *r.heatmaps, *r.lines, *r.bars, CLEAN]
    return list(dict.fromkeys(specs))


def _objective_level(plan: Plan, arm: Arm) -> Level | None:
    for axis, name in arm:
        level = plan.scenario.axis(axis).level(name)
        if level.objective:
            return level
    return None


def _baseline_clean(plan: Plan, records: Mapping[str, RunRecord]) -> float | None:
    """Mean final clean accuracy of the baseline arm's finished runs (None without one)."""
    baseline = plan.scenario.report.baseline
    if not baseline:
        return None
    runs = [
        records[run.run_id] for run in plan.runs
        if run.run_id in records and all(dict(run.arm).get(a) == lv for a, lv in baseline.items())
    ]  # fmt: skip
    stat = summarize(outcome_value(CLEAN, r) for r in runs)
    return None if stat is None else stat.mean


def run_outcome(
    spec: str, run: RunRecord, level: Level | None, baseline_clean: float | None
) -> float | None:
    """`spec` for one run, derived outcomes included (see the module docstring)."""
    kind = parse_outcome(spec).kind
    if kind == "clean-cost":
        clean = outcome_value(CLEAN, run)
        return None if baseline_clean is None or clean is None else baseline_clean - clean
    if kind == "objective":
        if level is None:
            return None
        return run_outcome(level.objective, run, None, baseline_clean)
    return outcome_value(spec, run)


def collect(plan: Plan, records: Mapping[str, RunRecord]) -> list[ArmResult]:
    """Each arm's outcomes over the seeds that finished (`records` by run id)."""
    specs = report_specs(plan)
    baseline = _baseline_clean(plan, records)
    results = []
    for arm in plan.arms:
        runs = [r for r in plan.runs if r.arm == arm]
        done = [records[r.run_id] for r in runs if r.run_id in records]
        level = _objective_level(plan, arm)
        outcomes = {
            spec: summarize(run_outcome(spec, record, level, baseline) for record in done)
            for spec in specs
        }
        results.append(
            ArmResult(
                arm=arm,
                label=plan.label(arm),
                run_ids=tuple(r.run_id for r in runs if r.run_id in records),
                failed=tuple(r.run_id for r in runs if r.run_id not in records),
                outcomes=outcomes,
                objective=level.objective if level else "",
                success=level.success if level else "higher",
            )
        )
    return results


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as the strings 'inf', '-inf', 'nan' (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def results_document(
    plan: Plan, arms: Sequence[ArmResult], run_status: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    """The content of results.json: the scenario, its settings, every run and arm."""
    s = plan.scenario
    return json_safe(
        {
            "scenario": s.name,
            "title": s.title,
            "summary": s.summary,
            "job": s.job,
            "quick": plan.quick,
            "quick_note": s.quick.note if plan.quick else "",
            "seeds": list(plan.seeds),
            "federation": plan.federation.model_dump(by_alias=True) if s.job == "federated"
            else None,
            "config": dict(s.config) | (dict(s.quick.config) if plan.quick else {}),
            "job_params": dict(s.job_params) | (dict(s.quick.job) if plan.quick else {}),
            "axes": [axis.model_dump(by_alias=True) for axis in s.axes],
            "paper": s.paper.model_dump(by_alias=True),
            "deviations": list(s.deviations),
            "runs": [{"run_id": r.run_id, "arm": dict(r.arm), "seed": r.seed,
                      **run_status.get(r.run_id, {"status": "not run"})} for r in plan.runs],
            "arms": [
                {"arm": dict(a.arm), "label": a.label, "runs": list(a.run_ids),
                 "failed": list(a.failed), "objective": a.objective, "success": a.success,
                 "outcomes": {k: None if v is None else asdict(v) for k, v in a.outcomes.items()}}
                for a in arms
            ],
            "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )  # fmt: skip


def write_results(path: Path, document: Mapping[str, Any]) -> None:
    """Write results.json (strict JSON, indented)."""
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
