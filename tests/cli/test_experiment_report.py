"""Outcomes, results and reports on run directories written here in the run store's format (the
numbers are chosen so that every outcome has one right answer); `certfl report RUN_DIR`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from cli.main import main
from cli.outcomes import load_run, outcome_value
from cli.report_page import experiment_html, experiment_markdown, format_value
from cli.results import collect, results_document
from cli.scenario import load_scenario, plan
from core.config import RunConfig
from core.gate_rule import Check
from server.app import round_record as server_round_record
from server.rounds import RoundOutcome
from server.run_store import ROUND_SCHEMA_VERSION
from strategies.gate import GateReport, ShadowVerdict
from strategies.robust import RoundReport

ATTACKS = [3, 5]  # rounds in which the colluders attacked
SCENARIO = """
title = "demo"
summary = "two attacks x two defenses"
deviations = ["none really"]
[[axes]]
name = "attack"
[[axes.levels]]
name = "none"
[[axes.levels]]
name = "backdoor"
objective = "final:backdoor_success"
[[axes.levels]]
name = "distillation"
objective = "final:pgd_t_acc"
success = "lower"
[[axes]]
name = "defense"
[[axes.levels]]
name = "mean"
[[axes.levels]]
name = "gate"
[paper]
citation = "Someone et al."
source = "Table 9"
[[paper.rows]]
arm = { attack = "backdoor", defense = "gate" }
values = { "final:clean_acc" = 0.987, "mitigation-rounds" = ">10" }
[report]
table = ["final:clean_acc", "objective", "clean-cost", "attacks-blocked", "mitigation-rounds"]
heatmaps = ["objective", "clean-cost"]
curves = ["clean_acc", "pgd_acc"]
log-curves = ["cert_loss@0.1"]
baseline = { attack = "none", defense = "mean" }
"""


def round_record(cfg: RunConfig, t: int, aggregated: bool, metrics: dict,
                 gate: GateReport | None = None) -> dict:  # fmt: skip
    """Round `t`'s record as the ServerApp writes it (server/app.py `round_record`, stamped)."""
    report = RoundReport(round=t, sampled=5, nodes=[1, 2, 3, 4, 5], received=5, accepted=5,
                         aggregated=aggregated or gate is not None,
                         skip_reason="" if aggregated or gate else "too few valid replies",
                         train_seconds=9.0 if t in ATTACKS else 3.0)  # fmt: skip
    record = server_round_record(cfg, RoundOutcome(report, gate), metrics, eval_s=0.1)
    return {"schema": ROUND_SCHEMA_VERSION, "time": "2025-01-01T00:00:00+00:00", **record,
            "model_sha256": "0" * 64}  # fmt: skip


def gate_report(t: int, accepted: bool, loss: float) -> GateReport:
    """A gate decision by the cfat rule: certified loss against a growth bound of 2.2, with a
    calibrated shadow verdict."""
    check = Check("cert_loss@0.1", loss, 2.0, 2.2, "max", "growth")
    shadow = ShadowVerdict("calibrated", accepted, () if accepted else ("cert_loss@0.1 window",))
    return GateReport(round=t, rule="cfat", accepted=accepted, warmup=False, checks=(check,),
                      metrics={"cert_loss@0.1": loss}, samples={"cert_loss@0.1": 100}, early="",
                      seconds=1.0, timings={"wall": 1.0}, shadow=(shadow,))  # fmt: skip


def write_run(root: Path, name: str, clean: float, attacked: bool, gated: bool) -> Path:
    """Rounds 0..6; with `attacked`, attacks in ATTACKS, a gated run skips them. tp_confidence is
    0.9 after round 3 and decays below 0.5 two rounds later, then is up again after round 5."""
    run = root / name
    run.mkdir(parents=True)
    cfg = RunConfig.from_flat({"num-rounds": 6, "roles.malicious-fraction": 0.4 * attacked,
                               "roles.attack": "backdoor", "gate.enabled": gated})  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg.to_flat()))
    confidence = {3: 0.9, 4: 0.7, 5: 0.95, 6: 0.8}
    lines = []
    for t in range(7):
        hit = attacked and t in ATTACKS
        skipped = hit and gated
        metrics = {"clean_acc": clean + 0.01 * t, "pgd_acc": 0.5, "pgd_t_acc": 0.2 if hit else 0.5,
                   "backdoor_success": 0.8 if attacked and t >= 3 and not gated else 0.0,
                   "tp_confidence": confidence.get(t, 0.1) if attacked else 0.1,
                   "cert_loss@0.1": 2.0}  # fmt: skip
        gate = gate_report(t, not hit, 300.0 if hit else 2.0) if gated and t > 0 else None
        lines.append(round_record(cfg, t, not skipped, metrics, gate))
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if attacked:
        truth = [{"round": t, "partition_id": 1, "policy": "backdoor", "attacked": True,
                  "coalition": [1, 2], "error": ""} for t in ATTACKS]  # fmt: skip
        (run / "ground_truth.jsonl").write_text("".join(json.dumps(e) + "\n" for e in truth))
    (run / "done").write_text("42.0\n")
    return run


def test_outcomes_of_one_run(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, "r", clean=0.8, attacked=True, gated=True))
    assert run.attack_rounds == ATTACKS and run.skipped_rounds == ATTACKS
    assert outcome_value("final:clean_acc", run) == pytest.approx(0.86)
    assert outcome_value("max:tp_confidence", run) == 0.95
    assert outcome_value("min:pgd_t_acc", run) == 0.2
    assert outcome_value("before-attack:clean_acc", run) == pytest.approx(0.82)
    assert outcome_value("attack:pgd_t_acc", run) == 0.2
    assert outcome_value("after-attack-max:tp_confidence", run) == 0.95
    assert outcome_value("candidate-attack:cert_loss@0.1", run) == 300.0
    assert outcome_value("attacks-blocked", run) == 1.0
    assert outcome_value("benign-skipped", run) == 0.0
    assert outcome_value("attack-rounds", run) == 2.0
    assert outcome_value("attack-train-s", run) == 9.0
    assert outcome_value("benign-train-s", run) == 3.0
    assert outcome_value("wall-s", run) == 42.0
    assert math.isinf(outcome_value("mitigation-rounds", run))  # round 5 came back before 6
    assert outcome_value("final:no_such_metric", run) is None
    clean = load_run(write_run(tmp_path, "c", clean=0.8, attacked=False, gated=False))
    assert outcome_value("attacks-blocked", clean) is None
    assert outcome_value("mitigation-rounds", clean) is None


def experiment(tmp_path: Path):
    scenario = load_scenario("demo", _scenario_dir(tmp_path))
    p = plan(scenario)
    runs = tmp_path / "runs"
    records = {}
    for run in p.runs:
        levels = dict(run.arm)
        attacked, gated = levels["attack"] != "none", levels["defense"] == "gate"
        clean = 0.8 - 0.1 * attacked - 0.05 * gated
        records[run.run_id] = load_run(write_run(runs, run.run_id, clean, attacked, gated))
    return p, records


def _scenario_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "scenarios"
    directory.mkdir()
    (directory / "demo.toml").write_text(SCENARIO)
    return directory


def test_clean_cost_and_objective_need_the_other_arms(tmp_path: Path) -> None:
    p, records = experiment(tmp_path)
    arms = {a.arm: a for a in collect(p, records)}
    base = arms[(("attack", "none"), ("defense", "mean"))]
    backdoor_gate = arms[(("attack", "backdoor"), ("defense", "gate"))]
    distill_mean = arms[(("attack", "distillation"), ("defense", "mean"))]
    assert base.outcomes["clean-cost"].mean == pytest.approx(0.0)
    assert base.outcomes["objective"] is None and base.objective == ""
    assert backdoor_gate.outcomes["clean-cost"].mean == pytest.approx(0.15)
    assert backdoor_gate.outcomes["objective"].mean == 0.0  # the gate kept the backdoor out
    assert arms[(("attack", "backdoor"), ("defense", "mean"))].outcomes["objective"].mean == 0.8
    assert distill_mean.objective == "final:pgd_t_acc" and distill_mean.success == "lower"
    doc = results_document(p, list(arms.values()), {})
    json.dumps(doc, allow_nan=False)  # strict JSON: inf mitigation rounds are strings
    assert "inf" in json.dumps(doc)


def test_reports_put_the_paper_beside_ours_and_embed_every_plot(tmp_path: Path) -> None:
    p, records = experiment(tmp_path)
    arms = collect(p, records)
    status = {r: {"status": "done", "wall_s": 42.0} for r in records}
    md = experiment_markdown(p, arms, status)
    row = next(line for line in md.splitlines() if line.startswith("| backdoor / gate"))
    assert "| 0.710 | 0.987 |" in row and "| not mitigated | >10 |" in row
    assert "Someone et al., Table 9" in md and "- none really" in md
    html = experiment_html(p, arms, records, status)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2 + len(arms)  # two heat maps, one curve figure per arm
    assert all(len(i) > 1000 for i in images)
    assert "http://" not in html and "https://" not in html  # nothing to fetch


def test_certfl_report_shows_gate_reasons_and_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = write_run(tmp_path, "gated", clean=0.8, attacked=True, gated=True)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    html = (run / "report.html").read_text()
    assert "SKIPPED (cfat)" in html and "cert_loss@0.1 300 (ref 2, growth &lt;= 2.2) FAIL" in html
    assert "calibrated: SKIPPED (cert_loss@0.1 window)" in html  # the shadow rule's verdict
    assert html.count("<tr><td>3</td><td>1</td><td>backdoor</td><td>yes</td>") == 1  # ledger
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 2
    with pytest.raises(SystemExit, match="not a run directory"):
        main(["report", str(tmp_path)])


def test_format_value() -> None:
    assert format_value("final:cert_loss@0.1", 44000.0) == "4.4e+04"
    assert format_value("attack-rounds", 3.0) == "3" and format_value("attack-rounds", 2.5) == "2.5"
    assert format_value("final:clean_acc", None) == "-"


def test_a_run_whose_colluders_never_attacked_is_flagged(tmp_path: Path) -> None:
    p, records = experiment(tmp_path)
    quiet = next(r for r in records if r.startswith("backdoor__mean"))
    (records[quiet].run_dir / "ground_truth.jsonl").unlink()  # they never met: no attack
    records[quiet] = load_run(records[quiet].run_dir)
    arms = collect(p, records)
    md = experiment_markdown(p, arms, {}, records)
    assert f"> Malicious clients but no attack in: {quiet}" in md
    assert f"no attack in: {quiet}" in experiment_html(p, arms, records, {})
