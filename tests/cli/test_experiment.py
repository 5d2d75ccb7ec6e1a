"""`certfl experiment` end to end, as CI runs it: `cfat-table1 --quick` (three models trained
centrally and certified) and `matrix --quick` (four real `flwr run` simulations), each writing
results.json, report.md and report.html; the report rendered in headless Chromium with its plots
decoded; an experiment interrupted with SIGTERM resumes without redoing its finished runs, and
continues a federated run cut short from its last round, leaving no process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.process_tree import watched

pytestmark = pytest.mark.slow
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def certfl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real command in a child process (its progress goes to stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def outcomes(results: dict, **arm: str) -> dict:
    """The means of one arm's outcomes in results.json."""
    match = next(a for a in results["arms"] if a["arm"] == arm)
    return {k: None if v is None else v["mean"] for k, v in match["outcomes"].items()}


def read_records(path: Path) -> list[dict]:
    """The complete JSON lines of a rounds.jsonl being written ([] before it exists)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            continue
    return records


def images(html: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)


@pytest.fixture(scope="module")
def table1(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("experiments")
    done = certfl("experiment", "cfat-table1", "--quick", "--out", str(out), "--data-dir",
                  str(data_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out / "cfat-table1"


def test_cfat_table1_quick_writes_results_and_reports(table1: Path) -> None:
    results = json.loads((table1 / "results.json").read_text())
    assert results["quick"] and [r["status"] for r in results["runs"]] == ["done"] * 3
    pgd, distilled = outcomes(results, model="pgd"), outcomes(results, model="distilled")
    backdoor = outcomes(results, model="backdoor")
    for arm in (pgd, distilled, backdoor):
        assert all(arm[f"final:cert_loss@{r}"] > 0 for r in ("0.1", "0.15", "0.25"))
        assert 0 <= arm["final:cert_acc@0.1"] <= arm["final:clean_acc"] <= 1
    # CFAT's pattern, already at this size: the distilled model's certified loss towers over
    # the honest one's, and only the backdoored model answers to the trigger
    assert distilled["final:cert_loss@0.1"] > 10 * pgd["final:cert_loss@0.1"]
    assert backdoor["final:backdoor_success"] > pgd["final:backdoor_success"] + 0.1
    md = (table1 / "report.md").read_text()
    assert "| cert loss @0.1 (paper) | 0.15 | 8500 | 50.81 |" in md  # typed in from Table 1
    assert "## Deviations from the paper" in md and "Quick run" in md
    html = (table1 / "report.html").read_text()
    assert len(images(html)) == 4  # certified loss bars, one curve figure per model
    for run in results["runs"]:
        assert (table1 / run["run_dir"] / "report.html").is_file()


def test_report_renders_in_headless_chromium(table1: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run apt-gets it)")
    pages = [table1 / "report.html", table1 / "runs" / "pgd__seed0" / "report.html"]
    for i, page in enumerate(pages):
        profile = tmp_path / f"profile-{i}"
        profile.mkdir()
        dom = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
             page.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        body = re.search(r'<body data-images="(\d+)" data-images-decoded="(\d+)"', dom)
        assert body, dom[:2000]
        total, decoded = int(body[1]), int(body[2])
        assert total == len(images(page.read_text())) >= 2 and decoded == total
        assert "Results" in dom or "Summary" in dom


def test_matrix_quick_fills_its_heat_maps(tmp_path: Path, data_dir: Path) -> None:
    done = certfl("experiment", "matrix", "--quick", "--out", str(tmp_path), "--data-dir",
                  str(data_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    root = tmp_path / "matrix"
    results = json.loads((root / "results.json").read_text())
    assert len(results["arms"]) == 4 and len(results["runs"]) == 4
    base = outcomes(results, attack="none", defense="mean")
    assert base["clean-cost"] == 0 and base["objective"] is None and base["attack-rounds"] == 0
    for defense in ("mean", "gate"):
        flipped = outcomes(results, attack="sign-flip", defense=defense)
        assert flipped["attack-rounds"] == 2  # rounds 2 and 3, the colluders always sampled
        assert flipped["objective"] == pytest.approx(flipped["clean-cost"])
    gated = json.loads((root / "runs" / "sign-flip__gate__seed0" / "rounds.jsonl").read_text()
                       .splitlines()[-1])  # fmt: skip
    assert gated["gate"] is not None and gated["gate"]["checks"]
    html = (root / "report.html").read_text()
    assert len(images(html)) == 2  # the two heat maps
    assert "4 of the 196 cells" in (root / "report.md").read_text()


TINY = """
title = "tiny"
summary = "three tiny central runs"
job = "central"
deviations = ["none"]
[config]
"data.n-cert" = 5
"data.n-val" = 0
"eval.n-test" = 50
"eval.adv-steps" = 2
"train.adv-steps" = 1
"attack.distill-epochs" = 1
[job-params]
train-samples = 400
epochs = 2
cert-radii = "0.1"
[[axes]]
name = "model"
[[axes.levels]]
name = "pgd"
job = { recipe = "pgd" }
[[axes.levels]]
name = "backdoor"
job = { recipe = "backdoor" }
[[axes.levels]]
name = "distilled"
job = { recipe = "distilled" }
[paper]
citation = "none"
[report]
table = ["final:clean_acc"]
"""


def own_scenario(tmp_path: Path, name: str, text: str, data_dir: Path) -> tuple[list[str], Path]:
    """Scenario `name` written under `tmp_path`: the `certfl` arguments that run it, and the
    --out directory they write."""
    scenarios, out = tmp_path / "scenarios", tmp_path / "out"
    scenarios.mkdir()
    (scenarios / f"{name}.toml").write_text(text)
    args = ["experiment", name, "--scenarios", str(scenarios), "--out", str(out),
            "--data-dir", str(data_dir)]  # fmt: skip
    return args, out


def test_interrupted_experiment_resumes_without_redoing_finished_runs(
    tmp_path: Path, data_dir: Path
) -> None:
    args, out = own_scenario(tmp_path, "tiny", TINY, data_dir)
    runs = out / "tiny" / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = runs / "pgd__seed0"
    deadline = time.monotonic() + 300
    while not (first / "done").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted with" in stderr, stderr[-3000:]
    finished = sorted(p.parent.name for p in runs.glob("*/done"))
    assert "pgd__seed0" in finished and len(finished) < 3  # stopped part-way
    assert not (out / "tiny" / "results.json").exists()
    stamps = {name: (runs / name / "done").stat().st_mtime_ns for name in finished}

    again = certfl(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(finished)} of 3 runs already done: not redone" in again.stderr
    assert all((runs / name / "done").stat().st_mtime_ns == t for name, t in stamps.items())
    assert sorted(p.parent.name for p in runs.glob("*/done")) == sorted(
        ["pgd__seed0", "backdoor__seed0", "distilled__seed0"])  # fmt: skip
    results = json.loads((out / "tiny" / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["done"] * 3
    third = certfl(*args, timeout=600)  # nothing left to do
    assert "3 of 3 runs already done" in third.stderr and "started" not in third.stderr


TINY_FEDERATED = """
title = "tiny federated"
summary = "one short simulation"
deviations = ["none"]
[federation]
supernodes = 3
concurrent = 3
[config]
"model.name" = "mlp"
"num-rounds" = 10
"train.clients-per-round" = 3
"train.mode" = "sgd"
"train.local-epochs" = 1
"data.max-client-samples" = 100
"eval.n-test" = 100
"eval.adv-steps" = 1
"gate.enabled" = false
[[axes]]
name = "rule"
[[axes.levels]]
name = "mean"
config = { "agg.rule" = "mean" }
[paper]
citation = "none"
[report]
table = ["final:clean_acc"]
"""


def test_a_federated_run_cut_short_resumes_after_its_last_round(
    tmp_path: Path, data_dir: Path
) -> None:
    """SIGTERM mid-run stops every process of the simulation; the same command continues the
    run from its resume point (`resume-from`) instead of starting it again."""
    args, out = own_scenario(tmp_path, "fed", TINY_FEDERATED, data_dir)
    run_dir = out / "fed" / "runs" / "mean__seed0"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with watched([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env) as (proc, _):
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if any(r["round"] >= 2 for r in read_records(run_dir / "rounds.jsonl")):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "interrupted with 0 of 1 runs done" in output, output
    played = max(r["round"] for r in read_records(run_dir / "rounds.jsonl"))
    assert 2 <= played < 10 and not (run_dir / "done").exists()

    again = certfl(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed_after = int(re.search(r"resuming after round (\d+)", again.stderr)[1])
    assert resumed_after >= 2 and "resumed" in again.stderr
    rounds = [r["round"] for r in read_records(run_dir / "rounds.jsonl")]
    assert rounds == list(range(11))  # every round once: none lost, none played twice
    log = (out / "fed" / "logs" / "mean__seed0.log").read_text()
    assert "round   1/10" in log and "resuming after round" in log  # one log, both parts
