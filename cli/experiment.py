"""`certfl experiment NAME [--quick] [--seeds N] [--out DIR]`: run a scenario
(`experiments/<name>.toml`, cli/scenario.py) and write `<out>/<name>/` with every run directory
(`runs/`), their logs (`logs/`), `results.json`, `report.md` and `report.html`.

Every run's config is resolved and validated (as `certfl simulate` validates it) before the
first one starts. Runs go one after another; a run whose directory has `done` and the same
planned config (`planned.json`) is not run again, so an interrupted experiment resumes where it
stopped. An unfinished federated run of the same plan continues after its last recorded round
(`resume-from`, server/checkpoint.py); any other unfinished run directory is started afresh.
Progress: runs done, the current run's round, the time left. A run that fails is reported and
the others go on; the exit status is then 1. SIGTERM stops like Ctrl-C: every process of the
run in flight is stopped (cli/processes.py).
`certfl experiment --list` names the scenarios with one line each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from cli import html_page
from cli.experiment_jobs import JOBS, POST_STEPS, RunJob
from cli.outcomes import RunRecord, load_run
from cli.processes import signals_interrupt
from cli.report_page import experiment_html, experiment_markdown, results_table
from cli.results import collect, results_document, write_results
from cli.run_report import write_run_report
from cli.scenario import (
    EXPERIMENTS_DIR,
    Plan,
    PlannedRun,
    ScenarioError,
    load_scenario,
    plan,
    resolved_config,
    scenario_names,
)
from server.checkpoint import check_resumable, load_resume_point

PLANNED = "planned.json"


def time_left(
    elapsed: float,
    round_: int,
    num_rounds: int,
    runs_after: int,
    past_walls: Sequence[float],
    pace: float | None = None,
) -> float | None:
    """Seconds left: the current run's remaining rounds at `pace` seconds a round (measured
    between its round lines; without it, its elapsed time over the rounds done, start-up
    included), or the mean of the runs finished in this session before its first round; plus
    the runs after it at that mean (or at the current run's projected length). None when
    nothing is known yet.

    >>> time_left(30.0, 3, 10, 2, [])  # 10 s a round: 70 s to go, then 2 runs of 100 s
    270.0
    >>> time_left(30.0, 3, 10, 0, [], pace=5.0)  # start-up aside, 5 s a round
    35.0
    >>> time_left(5.0, 0, 10, 1, [60.0, 80.0])
    135.0
    >>> time_left(5.0, 0, 10, 1, []) is None
    True
    """
    mean_past = statistics.fmean(past_walls) if past_walls else None
    if round_ > 0:
        rest = (num_rounds - round_) * (pace if pace is not None else elapsed / round_)
        projected = elapsed + rest
    elif mean_past is not None:
        projected = mean_past
    else:
        return None
    per_run = mean_past if mean_past is not None else projected
    return max(projected - elapsed, 0.0) + runs_after * per_run


def clock(seconds: float | None) -> str:
    """'1h02m', '4m05s', '12s', or '?'.

    >>> clock(3725), clock(245), clock(12.4), clock(None)
    ('1h02m', '4m05s', '12s', '?')
    """
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class Progress:
    """The progress display: a line per run start and per round of the current run."""

    name: str
    total: int
    stream: TextIO
    to_run: int = 0  # runs that will execute in this session
    executed: int = 0
    walls: list[float] = field(default_factory=list)
    run_id: str = ""
    started: float = 0.0
    first_round: tuple[int, float] | None = None  # the current run's first round line, and when
    resumed_after: int | None = None  # the round the current run resumed after (None: fresh)
    session_start: float = field(default_factory=time.perf_counter)

    def say(self, text: str) -> None:
        self.stream.write(f"[experiment {self.name}] {text}\n")
        self.stream.flush()

    def start(self, index: int, run_id: str, resumed_after: int | None = None) -> None:
        self.run_id, self.started, self.first_round = run_id, time.perf_counter(), None
        self.resumed_after = resumed_after
        how = "started" if resumed_after is None else "resumed"
        self.say(f"run {index}/{self.total} {run_id}: {how}")

    def on_round(self, round_: int, num_rounds: int) -> None:
        now = time.perf_counter()
        elapsed = now - self.started
        if self.first_round is None:
            self.first_round = (round_, now)
        first, at = self.first_round
        pace = (now - at) / (round_ - first) if round_ > first else None
        runs_after = self.to_run - self.executed - 1
        skip = self.resumed_after or 0  # rounds played before this session: not in `elapsed`
        left = time_left(elapsed, round_ - skip, num_rounds - skip, runs_after, self.walls, pace)
        total = time.perf_counter() - self.session_start
        self.say(f"{self.run_id} | round {round_}/{num_rounds} | run {clock(elapsed)} | "
                 f"session {clock(total)} | ~{clock(left)} left "
                 f"({self.executed}/{self.to_run} runs done)")  # fmt: skip

    def finish(self, ok: bool) -> float:
        wall = time.perf_counter() - self.started
        self.executed += 1
        if ok and self.resumed_after is None:  # a resumed run's wall is only its rest
            self.walls.append(wall)
        self.say(f"run {self.run_id}: {'done' if ok else 'FAILED'} in {clock(wall)} "
                 f"({self.executed}/{self.to_run} runs of this session)")  # fmt: skip
        return wall


def data_dir(cli_value: str, p: Plan) -> str:
    """The absolute data directory every run uses: --data-dir, the scenario's data.dir,
    $CERTFL_DATA, ./data (the ServerApp's working directory is Flower's, not ours)."""
    value = cli_value or str(p.scenario.config.get("data.dir", "")) or os.environ.get(
        "CERTFL_DATA", ""
    ) or "data"  # fmt: skip
    return str(Path(value).expanduser().resolve())


def planned_record(run: PlannedRun, flat: Mapping[str, Any]) -> dict[str, Any]:
    """What a finished run must have been started with to count as this planned run."""
    return {"run_id": run.run_id, "overrides": dict(flat), "job": dict(run.job_params)}


def same_plan(run_dir: Path, planned: Mapping[str, Any]) -> bool:
    """`run_dir` was started as this planned run (its `planned.json` matches)."""
    marker = run_dir / PLANNED
    return marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(planned))


def is_finished(run_dir: Path, planned: Mapping[str, Any]) -> bool:
    """`done` exists and `planned.json` matches: the run need not be redone."""
    return (run_dir / "done").is_file() and same_plan(run_dir, planned)


def resumable_round(job: RunJob, planned: Mapping[str, Any]) -> int | None:
    """The round after which an unfinished run of this plan can continue (its `resume.pt`,
    server/checkpoint.py, accepted for the run's config with `resume-from`), or None: no such
    run directory, another plan's, or no readable resume point (then it starts afresh)."""
    if (job.run_dir / "done").is_file() or not same_plan(job.run_dir, planned):
        return None
    cfg = job.cfg.model_copy(update={"resume_from": str(job.run_dir)})
    try:
        point = load_resume_point(job.run_dir)
        check_resumable(cfg, point)
    except Exception:  # none, unreadable or for another config: the run starts afresh
        return None
    return point.round


@dataclass(frozen=True)
class Layout:
    """Where an experiment writes: `<out>/<name>/{runs,logs}`, results and reports."""

    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def expand(value: Any, layout: Layout, run: PlannedRun) -> Any:
    """A string override with `{runs}` (this experiment's run directories) and `{seed}` (the
    run's seed) filled in, so that one arm can use another's output (e.g. ARU's non-robust
    model: `{runs}/fedavg__seed{seed}/final.pt`); anything else as it is."""
    if not isinstance(value, str):
        return value
    return value.replace("{runs}", str(layout.runs)).replace("{seed}", str(run.seed))


def prepare_jobs(p: Plan, layout: Layout, data: str) -> list[RunJob]:
    """Every run's job, its config resolved and validated (ScenarioError on the first bad one)."""
    jobs = []
    for run in p.runs:
        flat = {k: expand(v, layout, run) for k, v in run.overrides.items()}
        flat |= {"data.dir": data, "output-dir": str(layout.runs), "run-name": run.run_id}
        cfg = resolved_config(PlannedRun(run.run_id, run.arm, run.seed, flat, run.job_params))
        if p.scenario.job == "central":
            from cli.central_job import central_params

            try:
                central_params(run.job_params)
            except ValueError as err:
                raise ScenarioError(f"run {run.run_id}: {err}") from None
        jobs.append(RunJob(run, cfg, flat, layout.runs / run.run_id,
                           layout.logs / f"{run.run_id}.log", p.federation,
                           p.scenario.timeout_s))  # fmt: skip
    return jobs


def execute(p: Plan, jobs: Sequence[RunJob], stream: TextIO) -> dict[str, dict[str, Any]]:
    """Run every job that is not finished yet; each run's status by id."""
    progress = Progress(p.scenario.name, len(jobs), stream)
    status: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        planned = planned_record(job.run, job.flat)
        if is_finished(job.run_dir, planned):
            status[job.run.run_id] = {"status": "done", "resumed": True}
        else:
            pending.append((job, planned))
    if len(pending) < len(jobs):
        progress.say(f"{len(jobs) - len(pending)} of {len(jobs)} runs already done: not redone")
    progress.to_run = len(pending)
    for job, planned in pending:
        index = jobs.index(job) + 1
        after = resumable_round(job, planned)
        if after is not None:
            progress.say(f"{job.run.run_id}: unfinished, resuming after round {after} "
                         "(resume-from)")  # fmt: skip
            job = replace(job, flat={**job.flat, "resume-from": str(job.run_dir)})
        else:
            if job.run_dir.exists():
                progress.say(f"{job.run.run_id}: unfinished or stale run directory, starting "
                             "afresh")  # fmt: skip
                shutil.rmtree(job.run_dir)
            job.run_dir.mkdir(parents=True)
            (job.run_dir / PLANNED).write_text(json.dumps(planned, indent=2))
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        progress.start(index, job.run.run_id, after)
        try:
            JOBS[p.scenario.job](job, progress.on_round)
            ok = True
        except Exception as err:  # one failed run is reported; the others still run
            progress.say(f"{job.run.run_id}: {type(err).__name__}: {err}")
            ok = False
        progress.finish(ok)
        status[job.run.run_id] = {"status": "done" if ok else "failed"}
    for job in jobs:
        if status[job.run.run_id]["status"] == "done" and not run_post_steps(p, job, progress):
            status[job.run.run_id] = {"status": "failed"}
    return status


def run_post_steps(p: Plan, job: RunJob, progress: Progress) -> bool:
    """The scenario's post steps whose output the run directory lacks; False if one failed."""
    for name in p.scenario.post:
        output, step = POST_STEPS[name]
        if (job.run_dir / output).is_file():
            continue
        progress.say(f"{job.run.run_id}: {name}")
        try:
            step(job.run_dir)
        except Exception as err:  # reported with the run; the other runs' steps still run
            progress.say(f"{job.run.run_id}: {name} failed: {type(err).__name__}: {err}")
            return False
    return True


def load_finished(p: Plan, jobs: Sequence[RunJob]) -> dict[str, RunRecord]:
    """The finished runs of this plan (done, same planned config, post steps' output), by id."""
    outputs = [POST_STEPS[name][0] for name in p.scenario.post]
    return {
        job.run.run_id: load_run(job.run_dir)
        for job in jobs
        if is_finished(job.run_dir, planned_record(job.run, job.flat))
        and all((job.run_dir / output).is_file() for output in outputs)
    }


def write_reports(
    p: Plan, jobs: Sequence[RunJob], layout: Layout, status: dict[str, dict[str, Any]]
) -> str:
    """results.json, report.md, report.html, and each finished run's report.html; the results
    table as Markdown."""
    records = load_finished(p, jobs)
    for job in jobs:
        st = status.setdefault(job.run.run_id, {"status": "not run"})
        if job.run.run_id in records:
            st["status"] = "done"
            st["wall_s"] = records[job.run.run_id].wall_s
            st["run_dir"] = str(job.run_dir.relative_to(layout.root))
            write_run_report(job.run_dir)
    arms = collect(p, records)
    write_results(layout.root / "results.json", results_document(p, arms, status))
    markdown = experiment_markdown(p, arms, status, records)
    (layout.root / "report.md").write_text(markdown, encoding="utf-8")
    html = experiment_html(p, arms, records, status)
    (layout.root / "report.html").write_text(html, encoding="utf-8")
    headers, rows = results_table(p, arms)
    return html_page.markdown_table(headers, rows)


def list_scenarios(directory: Path, stream: TextIO) -> int:
    """One line per scenario: name and summary (or why it does not load)."""
    for name in scenario_names(directory):
        try:
            summary = load_scenario(name, directory).summary
        except ScenarioError as err:
            summary = f"(invalid: {err})"
        stream.write(f"{name:<18} {summary}\n")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl experiment`."""
    p = subparsers.add_parser(
        "experiment", help="run a scenario (experiments/<name>.toml) and write its report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("name", nargs="?", help="the scenario (see --list)")
    p.add_argument("--list", action="store_true", help="name every scenario with one line")
    p.add_argument("--quick", action="store_true", help="the scenario's CI size (minutes)")
    p.add_argument("--seeds", type=int, default=0, help="seeds per arm (default: the scenario's)")
    p.add_argument("--out", default="runs/experiments", help="writes <out>/<name>/")
    p.add_argument("--data-dir", default="", help="datasets (default: $CERTFL_DATA, ./data)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results and reports from the finished runs, run nothing",
    )
    p.add_argument("--scenarios", default=str(EXPERIMENTS_DIR), help="scenario files directory")


def run(args: argparse.Namespace) -> int:
    """List, or plan, validate, run what is missing, and report."""
    directory = Path(args.scenarios)
    if args.list:
        return list_scenarios(directory, sys.stdout)
    if not args.name:
        raise SystemExit("certfl experiment: name a scenario, or --list them")
    if args.seeds < 0:
        raise SystemExit(f"--seeds = {args.seeds}: expected a positive number")
    try:
        p = plan(load_scenario(args.name, directory), args.quick, args.seeds or None)
        layout = Layout(Path(args.out).expanduser().resolve() / args.name)
        jobs = prepare_jobs(p, layout, data_dir(args.data_dir, p))
    except ScenarioError as err:
        raise SystemExit(f"certfl experiment: {err}") from None
    layout.root.mkdir(parents=True, exist_ok=True)
    size = "quick" if p.quick else "full"
    print(f"[experiment {args.name}] {len(p.arms)} arms x {len(p.seeds)} seed(s) = {len(jobs)} "
          f"runs ({size}); writing {layout.root}", file=sys.stderr, flush=True)  # fmt: skip
    status: dict[str, dict[str, Any]] = {}
    if not args.report_only:
        try:
            with signals_interrupt():  # SIGTERM unwinds like Ctrl-C: a run's processes stop
                status = execute(p, jobs, sys.stderr)
        except KeyboardInterrupt:
            done = sum((job.run_dir / "done").is_file() for job in jobs)
            print(f"[experiment {args.name}] interrupted with {done} of {len(jobs)} runs done; "
                  "the same command resumes", file=sys.stderr)  # fmt: skip
            return 130
    table = write_reports(p, jobs, layout, status)
    print(table)
    for name in ("results.json", "report.md", "report.html"):
        print(layout.root / name)
    failed = [run_id for run_id, st in status.items() if st["status"] != "done"]
    if failed:
        print(f"[experiment {args.name}] runs not finished: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
