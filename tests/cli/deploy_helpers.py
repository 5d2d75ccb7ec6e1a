"""Helpers for tests that start real Flower processes by hand, as the multi-host recipe in the
README does (certfl launch does the same for one machine)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cli.processes import ProcessGroup
from cli.tls import Security, connection_toml, superlink_flags

BINDIR = Path(sys.executable).parent


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every process: this venv first on PATH, its own Flower home."""
    return {
        **os.environ,
        "PATH": f"{BINDIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "CERTFL_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def write_connection(home: Path, name: str, control: str, sec: Security) -> None:
    """`$FLWR_HOME/config.toml` with the `[superlink.<name>]` connection to `control`."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(connection_toml(name, control, sec))


def start_superlink(
    group: ProcessGroup,
    sec: Security,
    fleet: str,
    control: str,
    appio_port: int,
    prefix: Sequence[str] = (),
):
    """`flower-superlink` with `sec`'s flags, Fleet API on `fleet`, Control API on `control`
    (host:port), its Runtime API and SuperExec on loopback; `prefix` runs it elsewhere (e.g.
    `ip netns exec NAME`)."""
    return group.start("superlink", [
        *prefix, str(BINDIR / "flower-superlink"), *superlink_flags(sec),
        "--fleet-api-address", fleet, "--control-api-address", control,
        "--host", "127.0.0.1", "--port", str(appio_port),
    ])  # fmt: skip


def wait_for_text(path: Path, text: str, timeout: float, proc=None) -> str:
    """Wait until the file at `path` contains `text`; return the file's text. Fails early when
    `proc` exits first."""
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.is_file() else ""
        if text in content:
            return content
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {path} after {timeout:.0f}s:\n{content[-3000:]}")
