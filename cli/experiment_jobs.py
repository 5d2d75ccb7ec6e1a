"""How one run of an experiment is executed, by job type, and the steps that follow a run.

`federated`: a real `flwr run` simulation of this app (cli/simulation.py, the same path as
`flwr run . --stream`), its run config written to a TOML file that `--run-config` reads, its
output streamed to a log file and its per-round lines to the progress display.
`central`: one centrally trained model (cli/central_job.py), in this process.
Post steps run after a finished run when their output is missing: `crfl-certify` writes
crfl_certify.json (CRFL parameter smoothing and certified radii, cli/crfl_certify.py).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.scenario import REPO, Federation, PlannedRun
from cli.simulation import stream_simulation
from core.config import RunConfig

Progress = Callable[[int, int], None]  # (round, num_rounds)
ROUND_LINE = re.compile(r"\[certfl\] round\s+(\d+)/(\d+)")


class RunFailed(RuntimeError):
    """A run that ended without its `done` file."""


@dataclass(frozen=True)
class RunJob:
    """One run to execute: what the plan says, the resolved config, and where things go."""

    run: PlannedRun
    cfg: RunConfig
    flat: Mapping[str, Any]  # the run-config overrides handed to the app, runner keys included
    run_dir: Path
    log_path: Path
    federation: Federation
    timeout_s: float


def toml_value(value: Any) -> str:
    """A scalar as a TOML value.

    >>> [toml_value(v) for v in (True, 3, 0.1, "it's", float("inf"))]
    ['true', '3', '0.1', '"it\\'s"', 'inf']
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    raise TypeError(f"run-config value {value!r} is not a scalar")


def write_run_config(path: Path, flat: Mapping[str, Any]) -> None:
    """A TOML file of quoted dotted keys, as `flwr run --run-config FILE.toml` reads it."""
    lines = [f"{json.dumps(key)} = {toml_value(value)}" for key, value in flat.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_federated(job: RunJob, progress: Progress) -> None:
    """One `flwr run` simulation; RunFailed (naming the log) unless it wrote `done`."""
    config_file = job.log_path.with_suffix(".toml")
    write_run_config(config_file, job.flat)
    flwr_home = job.log_path.parent / f".flwr-{job.run.run_id}"
    with job.log_path.open("w", encoding="utf-8") as log:

        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            match = ROUND_LINE.search(line)
            if match:
                progress(int(match[1]), int(match[2]))

        status = stream_simulation(REPO, str(config_file), job.federation.supernodes, flwr_home,
                                   on_line, job.timeout_s, job.federation.concurrent)  # fmt: skip
    shutil.rmtree(flwr_home, ignore_errors=True)
    if not (job.run_dir / "done").is_file():
        raise RunFailed(f"flwr run exited with status {status} without finishing; log: "
                        f"{job.log_path}")  # fmt: skip


def run_central(job: RunJob, progress: Progress) -> None:
    """One centrally trained model (cli/central_job.py)."""
    from cli.central_job import central_params, run_central

    run_central(job.cfg, central_params(job.run.job_params), job.run_dir, progress)


JOBS: dict[str, Callable[[RunJob, Progress], None]] = {
    "federated": run_federated,
    "central": run_central,
}


def crfl_certify(run_dir: Path) -> None:
    """CRFL parameter smoothing of the run's final model; writes crfl_certify.json."""
    from cli.crfl_certify import certify_run

    summary = certify_run(run_dir, {})
    (run_dir / "crfl_certify.json").write_text(json.dumps(summary), encoding="utf-8")


# name -> (the file it writes in the run directory, the step)
POST_STEPS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "crfl-certify": ("crfl_certify.json", crfl_certify),
}
