"""`certfl report RUN_DIR`: one self-contained HTML page about one run: what it was, its
rounds, the gate's decisions with their reasons, the colluders' ground truth, its metrics and
plots (accuracy with attack and skipped rounds marked, certified loss on a log axis)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cli import html_page as h
from cli import report_plots as plots
from cli.outcomes import RunRecord, attacks_blocked, benign_skipped, load_run
from cli.run_config import app_defaults
from cli.scenario import REPO

ACCURACY_METRICS = ("clean_acc", "pgd_acc", "pgd_t_acc")
THREAT_METRICS = ("backdoor_success", "edge_case_acc", "tp_confidence", "tp_accuracy")
GATE_HEADERS = ["round", "attack", "verdict", "failed", "checks", "shadow rules", "seconds"]
HIDDEN = {"n_test", "adv_eps", "pgd_temperature", "clean_loss", "pgd_loss"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def describe(config: Mapping[str, Any]) -> str:
    """One line saying what the run was (data, model, rule, attack, defenses)."""
    c = config
    parts = [f"{c.get('data.dataset')} / {c.get('model.name')}",
             f"{c.get('num-rounds')} rounds", f"rule {c.get('agg.rule')}"]  # fmt: skip
    if c.get("roles.malicious-fraction"):
        parts.append(f"attack {c.get('roles.attack')} ({c['roles.malicious-fraction']:g} of "
                     "the clients)")  # fmt: skip
    if c.get("roles.fl-wbc-fraction"):
        parts.append(f"FL-WBC clients {c['roles.fl-wbc-fraction']:g}")
    if c.get("gate.enabled"):
        parts.append(f"gate ({c.get('gate.rule', 'cfat')} rule) at L_crt {c.get('gate.l-crt')}")
    if c.get("dp.mode", "none") != "none":
        parts.append(f"{c['dp.mode']} DP")
    if c.get("crfl.enabled"):
        parts.append(f"CRFL sigma {c.get('crfl.sigma')}")
    return ", ".join(parts)


def summary_rows(run: RunRecord) -> list[list[str]]:
    """Counts of the run and its final metrics."""
    trained = [r for r in run.rounds if r["round"] > 0]
    reasons: dict[str, int] = {}
    for r in trained:
        if not r["aggregated"]:
            reasons[r.get("skip_reason") or "?"] = reasons.get(r.get("skip_reason") or "?", 0) + 1
    rows = [
        ["rounds", str(len(trained))],
        ["accepted", str(sum(r["aggregated"] for r in trained))],
        ["skipped", ", ".join(f"{n} ({why})" for why, n in reasons.items()) or "0"],
        ["attack rounds (ground truth)", ", ".join(map(str, run.attack_rounds)) or "none"],
        ["attack rounds skipped", _fmt(attacks_blocked(run))],
        ["rounds without attack skipped", _fmt(benign_skipped(run))],
        ["wall time (s)", _fmt(run.wall_s)],
    ]
    final = run.rounds[-1].get("metrics", {}) if run.rounds else {}
    rows += [[f"final {k}", _fmt(v)] for k, v in sorted(final.items()) if k not in HIDDEN]
    return rows


def _check_text(check: Mapping[str, Any]) -> str:
    """A check of the gate's record as core/gate_rule.py `Check.describe` words it; the
    record has no direction, but a lower bound ('min') passes exactly when value >= bound."""
    value, bound, passed = check.get("value"), check.get("bound"), bool(check.get("passed"))
    lower = value is None or bound is None or (value >= bound) == passed
    op = ">=" if lower else "<="
    mark = "ok" if passed else "FAIL"
    return (f"{check.get('metric')} {_fmt(check.get('value'))} (ref "
            f"{_fmt(check.get('reference'))}, {check.get('criterion')} {op} "
            f"{_fmt(check.get('bound'))}) {mark}")  # fmt: skip


def gate_rows(run: RunRecord) -> list[list[str]]:
    """One row per gate decision: verdict (the rule, whether measuring stopped early), failed
    checks, every check, the verdicts of the shadow rules (judged, never enforced)."""
    attacks = set(run.attack_rounds)
    rows = []
    for r in run.rounds:
        gate = r.get("gate")
        if not gate:
            continue
        verdict = "accepted" if gate.get("accepted") else "SKIPPED"
        notes = [gate["rule"]] if gate.get("rule") else []
        notes += ["warm-up"] * bool(gate.get("warmup"))
        notes += [f"early: {gate['early']}"] * bool(gate.get("early"))
        if notes:
            verdict += f" ({', '.join(notes)})"
        shadow = "; ".join(
            f"{s.get('rule')}: {'accepted' if s.get('accepted') else 'SKIPPED'}"
            + (f" ({', '.join(s['failed'])})" if s.get("failed") else "")
            for s in gate.get("shadow", [])
        )
        rows.append([str(r["round"]), "yes" if r["round"] in attacks else "", verdict,
                     ", ".join(gate.get("failed", [])) or "-",
                     "; ".join(_check_text(c) for c in gate.get("checks", [])),
                     shadow or "-", _fmt(gate.get("seconds"))])  # fmt: skip
    return rows


def _metric_columns(run: RunRecord) -> list[str]:
    keys: dict[str, None] = {}
    for r in run.rounds:
        keys |= dict.fromkeys(k for k in r.get("metrics", {}) if k not in HIDDEN)
    ordered = [k for k in ACCURACY_METRICS if k in keys]
    return ordered + sorted(k for k in keys if k not in ordered)


def round_rows(run: RunRecord) -> tuple[list[str], list[list[str]]]:
    """Headers and one row per round: status, replies, every metric, timings."""
    metrics = _metric_columns(run)
    attacks = set(run.attack_rounds)
    headers = ["round", "attack", "status", "replies valid/received/sampled", "failures",
               *metrics, "train s", "gate s", "eval s"]  # fmt: skip
    rows = []
    for r in run.rounds:
        if r["round"] == 0:
            status = "initial model"
        else:
            status = "accepted" if r["aggregated"] else f"SKIPPED: {r.get('skip_reason', '')}"
        t = r.get("timings", {})
        failures = "; ".join(f"node {f.get('node_id')}: {f.get('reason')}"
                             for f in r.get("failures", [])) or "-"  # fmt: skip
        rows.append(
            [
                str(r["round"]),
                "yes" if r["round"] in attacks else "",
                status,
                f"{r.get('accepted', '-')}/{r.get('received', '-')}/{r.get('sampled', '-')}",
                failures,
                *(_fmt(r.get("metrics", {}).get(m)) for m in metrics),
                _fmt(t.get("train_s")),
                _fmt(t.get("gate_s")),
                _fmt(t.get("eval_s")),
            ]
        )
    return headers, rows  # fmt: skip


def truth_rows(run: RunRecord) -> list[list[str]]:
    """The colluders' ledger, one row per colluder and round."""
    return [[str(e.get("round")), str(e.get("partition_id")), str(e.get("policy")),
             _fmt(e.get("attacked")), ", ".join(map(str, e.get("coalition", []))),
             e.get("error") or ""] for e in run.ground_truth]  # fmt: skip


def config_rows(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[list[str]]:
    """Every resolved key, marking those that differ from the app's defaults."""
    rows = []
    for key in sorted(config):
        value = config[key]
        default = defaults.get(key)
        changed = key in defaults and _normal(value) != _normal(default)
        rows.append([key, _fmt(value), "changed" if changed else ""])
    return rows


def _normal(value: Any) -> Any:
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, str) and value and all(p.strip() for p in value.split(",")):
        try:
            return ",".join(f"{float(p):g}" for p in value.split(","))
        except ValueError:
            return value
    return value


def run_html(run: RunRecord) -> str:
    """The page of one run."""
    name = run.run_dir.name
    body = [f"<h1>Run {h.esc(name)}</h1>", h.para(describe(run.config)),
            h.para(f"Run directory: {run.run_dir}")]  # fmt: skip
    if run.wall_s is None:
        body.append(
            h.para("No `done` file: the run did not finish; this is what it wrote.", "warn")
        )
    body.append(h.section("Summary", h.table(["", "value"], summary_rows(run))))
    figures = []
    curves = plots.round_curves(run, ACCURACY_METRICS, _cert_losses(run), "accuracy and loss")
    if curves:
        figures.append(
            h.figure(
                curves,
                "per round: red dashed = attack round (ground truth), "
                "grey band = skipped round; certified loss on a log axis",
            )
        )
    threats = plots.round_curves(run, THREAT_METRICS, (), "attack-exposing metrics")
    if threats:
        figures.append(h.figure(threats, "backdoor success, edge-case and D_M metrics per round"))
    if figures:
        body.append(h.section("Plots", *figures))
    gate = gate_rows(run)
    if gate:
        body.append(
            h.section(
                "Gate decisions",
                h.table(
                    GATE_HEADERS,
                    gate,
                    numeric_from=99,
                ),
            )
        )
    headers, rows = round_rows(run)
    body.append(h.section("Rounds", h.table(headers, rows, numeric_from=5)))
    if run.ground_truth:
        body.append(
            h.section(
                "Ground truth (the colluders' ledger; the server never reads it)",
                h.table(
                    ["round", "partition", "policy", "attacked", "coalition", "error"],
                    truth_rows(run),
                    numeric_from=99,
                ),
            )
        )
    if run.crfl is not None:
        body.append(h.section("CRFL certification", h.para(_crfl_line(run.crfl))))
    body.append(
        h.section(
            "Configuration",
            h.table(
                ["key", "value", "vs. default"],
                config_rows(run.config, app_defaults(REPO)),
                numeric_from=99,
            ),
        )
    )
    return h.page(f"certfl run {name}", body)  # fmt: skip


def _cert_losses(run: RunRecord) -> list[str]:
    keys: dict[str, None] = {}
    for r in run.rounds:
        keys |= dict.fromkeys(k for k in r.get("metrics", {}) if k.startswith("cert_loss@"))
        keys |= dict.fromkeys(k for k in (r.get("gate") or {}).get("metrics", {})
                              if k.startswith("cert_loss@"))  # fmt: skip
    return sorted(keys)


def _crfl_line(summary: Mapping[str, Any]) -> str:
    line = (f"{summary.get('n_test')} test points, base accuracy "
            f"{_fmt(summary.get('base_accuracy'))}")  # fmt: skip
    if "smoothed_backdoor_success" in summary:
        line += f", smoothed backdoor success {_fmt(summary['smoothed_backdoor_success'])}"
    return line + " (per-point radii in crfl_certify.json)"


def write_run_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the page of `run_dir` (default `run_dir/report.html`); its path."""
    target = out or run_dir / "report.html"
    target.write_text(run_html(load_run(run_dir)), encoding="utf-8")
    return target


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl report`."""
    p = subparsers.add_parser("report", help="an HTML page about one run directory")
    p.add_argument("run_dir", help="a run directory (config.json, rounds.jsonl)")
    p.add_argument("--out", default="", help="the page to write (default RUN_DIR/report.html)")


def run(args: argparse.Namespace) -> int:
    """Write the page and say where."""
    run_dir = Path(args.run_dir)
    missing = [f for f in ("config.json", "rounds.jsonl") if not (run_dir / f).is_file()]
    if missing:
        raise SystemExit(f"{run_dir}: not a run directory (missing {', '.join(missing)})")
    print(write_run_report(run_dir, Path(args.out) if args.out else None))
    return 0
