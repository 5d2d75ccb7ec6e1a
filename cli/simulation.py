"""Run `flwr run` as a simulation in a private Flower home, and leave no process behind.

`flwr run` starts a detached local SuperLink that outlives it; tests and benchmarks need their
own (private FLWR_HOME and ports) and need it gone afterwards. Every process of the run
inherits FLWR_HOME, which is how they are found again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cli.processes import free_ports, kill_processes_with_env


def simulation_env(flwr_home: Path) -> dict[str, str]:
    """The environment of a private simulation: its own Flower home, free ports, our PATH, and
    one torch thread per ClientApp (several share the cores)."""
    bindir = Path(sys.executable).parent
    runtime_port, control_port = free_ports(2)
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns by name
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_RUNTIME_API_PORT": str(runtime_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "CERTFL_TORCH_THREADS": os.environ.get("CERTFL_TORCH_THREADS", "1"),
    }


def simulation_command(app: Path, run_config: str, supernodes: int, concurrent: int) -> list[str]:
    """`flwr run APP --stream` with `supernodes` virtual clients, `concurrent` ClientApps at once;
    `run_config` is `--run-config`'s value: "k=v ..." overrides or the path of a TOML file."""
    flwr = Path(sys.executable).parent / "flwr"
    return [str(flwr), "run", str(app), "--stream", "--federation-config",
            f"num-supernodes={supernodes} client-resources-num-cpus=1 "
            f"init-args-num-cpus={concurrent}",
            "--run-config", run_config]  # fmt: skip


def run_simulation(
    app: Path,
    run_config: str,
    supernodes: int,
    flwr_home: Path,
    timeout: float = 3600,
    concurrent: int = 5,
) -> subprocess.CompletedProcess:
    """`flwr run APP --stream` with `supernodes` virtual clients, `concurrent` of them running
    at once (at least the colluders of a round, who wait for each other); output in `.stdout`."""
    env = simulation_env(flwr_home)
    try:
        return subprocess.run(
            simulation_command(app, run_config, supernodes, concurrent),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        kill_processes_with_env("FLWR_HOME", str(flwr_home))


def stream_simulation(
    app: Path,
    run_config: str,
    supernodes: int,
    flwr_home: Path,
    on_line: Callable[[str], None],
    timeout: float = 3600,
    concurrent: int = 5,
) -> int:
    """As `run_simulation`, but each output line goes to `on_line` as it comes (progress, a log
    file); returns the exit status, -9 when the run was killed at `timeout` seconds."""
    env = simulation_env(flwr_home)
    proc = subprocess.Popen(
        simulation_command(app, run_config, supernodes, concurrent),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line)
        return proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_processes_with_env("FLWR_HOME", str(flwr_home))
