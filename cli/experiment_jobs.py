"""How one run of an experiment is executed, by job type, and the steps that follow a run.

`federated`: a real `flwr run` simulation of this app (cli/simulation.py, the same path as
`certfl simulate` and `flwr run . --stream`), its run config written to a TOML file that
`--run-config` reads (cli/run_config.py), its output streamed to a log file and its per-round
lines to the progress display.
`central`: one centrally trained model (cli/central_job.py), in this process.
Post steps run after a finished run when their output is missing: `crfl-certify` writes
crfl_certify.json (CRFL parameter smoothing and certified radii, cli/crfl_certify.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.run_config import toml_document
from cli.scenario import REPO, Federation, PlannedRun
from cli.simulation import run_simulation
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


def run_federated(job: RunJob, progress: Progress) -> None:
    """One `flwr run` simulation (cli/simulation.py, as `certfl simulate` runs it: its own
    SuperLink, every process stopped at the end); RunFailed (naming the log) unless it wrote
    `done`. The run config goes to Flower as one TOML file (cli/run_config.py), kept beside
    the log; a resumed run's log is continued."""
    config_file = job.log_path.with_suffix(".toml")
    config_file.write_text(toml_document(job.flat), encoding="utf-8")
    flwr_home = job.log_path.parent / f".flwr-{job.run.run_id}"
    with job.log_path.open("a" if "resume-from" in job.flat else "w", encoding="utf-8") as log:

        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            match = ROUND_LINE.search(line)
            if match:
                progress(int(match[1]), int(match[2]))

        try:
            status = run_simulation(REPO, str(config_file), job.federation.supernodes, flwr_home,
                                    job.timeout_s, job.federation.concurrent,
                                    on_line=on_line).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RunFailed(f"timed out after {job.timeout_s:g}s (every process stopped); log: "
                            f"{job.log_path}") from None  # fmt: skip
        finally:
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
