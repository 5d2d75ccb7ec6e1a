"""Shared test setup: where the real datasets are, and a private cache for extracted files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("CERTFL_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def certfl_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point CERTFL_DATA at the shared data and CERTFL_CACHE at a writable cache for the session."""
    os.environ["CERTFL_DATA"] = str(_data_dir())
    os.environ.setdefault("CERTFL_CACHE", str(tmp_path_factory.mktemp("certfl-cache")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (../shared/data unless CERTFL_DATA says otherwise)."""
    path = _data_dir()
    if not (path / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {path}; set CERTFL_DATA to the shared data directory")
    return path


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids of live processes whose environment holds `key=value` (children inherit it)."""
    needle = f"{key}={value}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_processes_with_env(key: str, value: str) -> None:
    """SIGKILL every live process whose environment holds `key=value`."""
    import contextlib
    import signal

    for pid in processes_with_env(key, value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def flwr_simulation(tmp_path: Path, run_config: str, supernodes: int, timeout: float = 600):
    """Run `flwr run` on this app as a real simulation with a private FLWR_HOME and ports.

    Returns the completed process (stdout + stderr in `.stdout`). Flower's detached local
    SuperLink, and everything it started, is killed afterwards.
    """
    import subprocess
    import sys

    from cli.processes import free_ports

    flwr = Path(sys.executable).parent / "flwr"
    home = tmp_path / "flwr-home"
    runtime_port, control_port = free_ports(2)
    env = {
        **os.environ,
        "PATH": f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_RUNTIME_API_PORT": str(runtime_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    try:
        return subprocess.run(
            [str(flwr), "run", str(REPO), "--stream", "--federation-config",
             f"num-supernodes={supernodes} client-resources-num-cpus=1",
             "--run-config", run_config],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        kill_processes_with_env("FLWR_HOME", str(home))
