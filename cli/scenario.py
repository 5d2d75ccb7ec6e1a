"""Scenarios as data: `experiments/<name>.toml` parsed into a validated `Scenario`, and the runs
an experiment is made of.

A scenario is a set of runs: run-config overrides shared by all (`config`), one or more axes of
levels (arms such as gate on/off, one level per defense, one per attack), each level adding its
own overrides, and seeds. Every combination of one level per axis is an arm (minus `exclude`);
every arm runs once per seed. `quick` sizes the scenario for CI: its `config` goes over the
scenario's (a level's own overrides still win), its `levels` keep a subset of each axis. `job`
says how a run is executed (`federated`: a `flwr run` simulation; `central`: one centrally
trained model, cli/central_job.py). `paper` holds the
paper's numbers typed in from its table (keyed by arm and outcome), `report` what to report
(outcome specs, cli/outcomes.py), `deviations` every way the scenario departs from
the paper.

A string override may name `{runs}` (the experiment's run directories) and `{seed}` (the run's
seed), so that an arm can use an earlier arm's output. Keys are hyphenated as in the run config.
A scenario that names an unknown key, level or axis, or whose runs would get a run config the
ServerApp rejects, fails here with the file, the key and what is allowed, before anything runs.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from cli.outcomes import parse_outcome
from cli.run_config import app_defaults, resolve
from core.config import ConfigError, RunConfig, _validate
from core.config_base import Section

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = REPO / "experiments"
# the keys the runner sets itself, per run
RUNNER_KEYS = ("data.dir", "output-dir", "run-name", "seed")

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
LEVEL_NAME = r"^[a-z0-9][a-z0-9.+-]*$"


class ScenarioError(ValueError):
    """A scenario file that is missing, malformed, or would start runs the app rejects."""


# hyphenated keys, unknown keys rejected, immutable: as the run config's sections
_Strict = Section


class Level(_Strict):
    """One level of an axis: a name (used in run ids), a label, and what it changes."""

    name: str = Field(pattern=LEVEL_NAME)
    label: str = ""  # shown in reports ("" -> name)
    config: dict[str, Scalar] = {}  # run-config overrides
    job: dict[str, Scalar] = {}  # parameters of the job type (e.g. the central recipe)
    objective: str = ""  # an attack level: the outcome that measures the attack's own goal
    success: Literal["higher", "lower"] = "higher"  # ... and which direction means it worked

    @property
    def title(self) -> str:
        return self.label or self.name


class Axis(_Strict):
    """A named list of levels; the arms are the product of every axis' levels."""

    name: str = Field(pattern=LEVEL_NAME)
    label: str = ""
    levels: tuple[Level, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Axis:
        names = [level.name for level in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"axis {self.name!r} has repeated level names: {names}")
        return self

    def level(self, name: str) -> Level:
        for level in self.levels:
            if level.name == name:
                return level
        allowed = ", ".join(level.name for level in self.levels)
        raise KeyError(f"axis {self.name!r} has no level {name!r}; levels: {allowed}")


class Federation(_Strict):
    """The simulated federation: virtual clients, and how many ClientApps run at once (at least
    the colluders that must meet in one round)."""

    supernodes: int = Field(10, ge=1)
    concurrent: int = Field(5, ge=1)


class Quick(_Strict):
    """How `--quick` shrinks the scenario for CI."""

    seeds: int = Field(1, ge=1)
    config: dict[str, Scalar] = {}
    job: dict[str, Scalar] = {}
    levels: dict[str, tuple[str, ...]] = {}  # axis -> the level names kept
    level_config: dict[str, dict[str, Scalar]] = {}  # level name -> overrides over the level's
    federation: Federation | None = None
    note: str = ""  # what the quick run covers, said in its report


class PaperRow(_Strict):
    """The paper's numbers for one arm: outcome spec -> value (a string such as '>10' where the
    paper gives no number)."""

    arm: dict[str, str]
    values: dict[str, StrictFloat | StrictInt | StrictStr]
    note: str = ""


class Paper(_Strict):
    """The paper, where its numbers come from, and what it states without numbers."""

    citation: str
    source: str = ""  # the table or figure
    rows: tuple[PaperRow, ...] = ()
    findings: tuple[str, ...] = ()  # stated results (for figures we cannot read numbers off)


class ReportSpec(_Strict):
    """What the report shows: a table of outcomes per arm and the plots."""

    table: tuple[str, ...] = Field(min_length=1)  # outcome specs, the table's columns
    curves: tuple[str, ...] = ()  # per-round metrics, one figure per arm (first seed)
    log_curves: tuple[str, ...] = ()  # per-round metrics on a log axis (certified loss)
    compare: tuple[str, ...] = ()  # per-round metric, one line per arm, one figure per row level
    heatmaps: tuple[str, ...] = ()  # outcome specs over the first two axes
    lines: tuple[str, ...] = ()  # outcome specs against the first axis' levels
    bars: tuple[str, ...] = ()  # outcome specs as grouped bars per arm, beside the paper's
    bars_log: bool = False
    baseline: dict[str, str] = {}  # the arm `clean-cost` is measured against


class Scenario(_Strict):
    """A scenario file (see the module docstring)."""

    name: str = ""  # the file's stem, set by `load_scenario`
    title: str
    summary: str  # one line, for `certfl experiment --list`
    job: Literal["federated", "central"] = "federated"
    seeds: int = Field(1, ge=1)
    timeout_s: float = Field(4 * 3600, gt=0)  # per run
    config: dict[str, Scalar] = {}
    job_params: dict[str, Scalar] = {}
    federation: Federation = Federation()
    axes: tuple[Axis, ...] = Field(min_length=1)
    exclude: tuple[dict[str, str], ...] = ()
    post: tuple[Literal["crfl-certify"], ...] = ()
    deviations: tuple[str, ...] = Field(min_length=1)
    paper: Paper
    report: ReportSpec
    quick: Quick = Quick()

    def axis(self, name: str) -> Axis:
        for axis in self.axes:
            if axis.name == name:
                return axis
        allowed = ", ".join(a.name for a in self.axes)
        raise KeyError(f"no axis {name!r}; axes: {allowed}")


Arm = tuple[tuple[str, str], ...]  # ((axis, level), ...) in axis order


@dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment: its arm, seed, run-config overrides and job parameters."""

    run_id: str
    arm: Arm
    seed: int
    overrides: Mapping[str, Any]  # run-config keys (without the runner's own, see RUNNER_KEYS)
    job_params: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    """Every run of a scenario as sized (`quick` or not), in execution order."""

    scenario: Scenario
    quick: bool
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    runs: tuple[PlannedRun, ...]
    federation: Federation

    def label(self, arm: Arm) -> str:
        """'label of level 1 / label of level 2' of an arm."""
        return " / ".join(self.scenario.axis(a).level(lv).title for a, lv in arm)


def arm_id(arm: Arm) -> str:
    """'level1__level2'."""
    return "__".join(level for _, level in arm)


def scenario_path(name: str, directory: Path = EXPERIMENTS_DIR) -> Path:
    """The file of scenario `name`; ScenarioError listing the known ones otherwise."""
    path = directory / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(scenario_names(directory)) or "none"
        raise ScenarioError(f"no scenario {name!r} in {directory}; known: {known}")
    return path


def scenario_names(directory: Path = EXPERIMENTS_DIR) -> list[str]:
    """The names of every scenario file in `directory`, sorted."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_scenario(name: str, directory: Path = EXPERIMENTS_DIR) -> Scenario:
    """Parse and validate `directory/<name>.toml` (schema, outcome specs, level references)."""
    path = scenario_path(name, directory)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None
    try:
        scenario = _validate(Scenario, {**raw, "name": name}, "scenario")
    except ConfigError as err:
        raise ScenarioError(f"{path}: {err}") from None
    try:
        _check_references(scenario)
    except (KeyError, ValueError) as err:
        raise ScenarioError(f"{path}: {err.args[0]}") from None
    return scenario


def _check_references(s: Scenario) -> None:
    """Every outcome spec parses; every arm, exclude, baseline and quick level exists."""
    r = s.report
    for spec in (*r.table, *r.heatmaps, *r.lines, *r.bars):
        parse_outcome(spec)
    for axis in s.axes:
        for level in axis.levels:
            if level.objective:
                parse_outcome(level.objective)
    arms = [row.arm for row in s.paper.rows] + list(s.exclude)
    for arm in [*arms, r.baseline] if r.baseline else arms:
        for axis_name, level in arm.items():
            s.axis(axis_name).level(level)
    for axis_name, names in s.quick.levels.items():
        for level in names:
            s.axis(axis_name).level(level)
    all_levels = {level.name for axis in s.axes for level in axis.levels}
    for name in s.quick.level_config:
        if name not in all_levels:
            raise ValueError(f"quick.level-config names no level {name!r}; levels: "
                             f"{', '.join(sorted(all_levels))}")  # fmt: skip
    if r.heatmaps and len(s.axes) != 2:
        raise ValueError(f"report.heatmaps needs exactly two axes, the scenario has {len(s.axes)}")


def plan(scenario: Scenario, quick: bool = False, seeds: int | None = None) -> Plan:
    """The runs of `scenario`: every arm (quick: the kept levels) times every seed.

    Overrides stack as: scenario `config`, `quick.config`, each level's `config` in axis order
    (a level is the arm's identity: it wins) with its `quick.level-config`, then the seed
    (`config.seed` + i). Job
    parameters stack the same way."""
    q = scenario.quick
    n_seeds = seeds or (q.seeds if quick else scenario.seeds)
    base_seed = int(scenario.config.get("seed", 0))
    seed_values = tuple(base_seed + i for i in range(n_seeds))
    kept = [
        [lv for lv in axis.levels if not quick or axis.name not in q.levels
         or lv.name in q.levels[axis.name]]
        for axis in scenario.axes
    ]  # fmt: skip
    arms = []
    for levels in itertools.product(*kept):
        arm = tuple((axis.name, lv.name) for axis, lv in zip(scenario.axes, levels, strict=True))
        if not any(_matches(arm, ex) for ex in scenario.exclude):
            arms.append(arm)
    runs = []
    for arm in arms:
        levels = [scenario.axis(a).level(lv) for a, lv in arm]
        overrides: dict[str, Any] = dict(scenario.config) | (dict(q.config) if quick else {})
        job: dict[str, Any] = dict(scenario.job_params) | (dict(q.job) if quick else {})
        for level in levels:
            overrides |= level.config
            job |= level.job
            if quick:
                overrides |= q.level_config.get(level.name, {})
        for seed in seed_values:
            run_id = f"{arm_id(arm)}__seed{seed}"
            runs.append(PlannedRun(run_id, arm, seed, overrides | {"seed": seed}, job))
    federation = q.federation if quick and q.federation else scenario.federation
    return Plan(scenario, quick, tuple(arms), seed_values, tuple(runs), federation)


def _matches(arm: Arm, exclude: Mapping[str, str]) -> bool:
    levels = dict(arm)
    return all(levels.get(axis) == level for axis, level in exclude.items())


def resolved_config(run: PlannedRun, app: Path = REPO) -> RunConfig:
    """The run config the ServerApp of `app` will build for `run` (cli/run_config.py, as
    `certfl simulate` checks it): ScenarioError naming the run and the key when an override is
    unknown to the app or its value is rejected."""
    try:
        defaults = app_defaults(app)
        unknown = sorted(set(run.overrides) - set(defaults) - set(RUNNER_KEYS))
        if unknown:
            raise ConfigError(
                f"run-config key(s) {', '.join(map(repr, unknown))} unknown to the app (not in "
                "pyproject.toml's [tool.flwr.app.config])"
            )
        return resolve(app, run.overrides)
    except ConfigError as err:
        raise ScenarioError(f"run {run.run_id}: {err}") from None


def validate_plan(p: Plan, app: Path = REPO) -> dict[str, RunConfig]:
    """Every run's resolved config, by run id (fails on the first bad run, see above)."""
    return {run.run_id: resolved_config(run, app) for run in p.runs}
