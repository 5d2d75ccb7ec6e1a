"""Child processes that are always stopped, together with every process they spawned.

Flower's SuperLink and SuperNodes spawn SuperExec, ServerApp and ClientApp processes of their
own, some in new sessions, so stopping a launcher's direct children is not enough: on exit the
whole process tree under each child is signalled. Children start in their own session so that a
terminal's Ctrl-C reaches only the launcher, which then stops them in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that are free on `host` right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(
    port: int, proc: subprocess.Popen, timeout: float, host: str = "127.0.0.1"
) -> None:
    """Block until `host:port` accepts connections; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{proc.args[0]} did not open port {port} within {timeout:.0f}s")


@dataclass
class ProcessGroup:
    """Starts named processes with logs in `log_dir`; on exit stops every group it started."""

    log_dir: Path
    env: Mapping[str, str]
    grace_seconds: float = 10.0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: Sequence[str], stdout_to_log: bool = True) -> subprocess.Popen:
        """Start `argv` in a new session; its output goes to `<log_dir>/<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = (self.log_dir / f"{name}.log").open("wb") if stdout_to_log else subprocess.PIPE
        proc = subprocess.Popen(
            list(argv),
            env=dict(self.env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def pids(self) -> list[int]:
        """Process ids of the group leaders started so far."""
        return [p.pid for p in self.procs.values()]

    def stop_all(self) -> None:
        """SIGTERM every process tree, wait up to the grace period, then SIGKILL what is left.

        The trees are listed before any signal: once a parent dies its children are re-parented
        and could no longer be found. Flower's SuperExec starts sessions of its own, so process
        groups alone would miss them.
        """
        pids = descendants([p.pid for p in self.procs.values()])
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids | descendants(list(pids)):  # anything spawned while stopping, too
            _signal(pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                table[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    return table


def descendants(roots: list[int]) -> set[int]:
    """`roots` and every live process below them."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids of live processes whose environment holds `key=value` (children inherit it)."""
    needle = f"{key}={value}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes() + b"\0" and _alive(int(entry.name)):
                    pids.append(int(entry.name))
    return pids


def kill_processes_with_env(key: str, value: str) -> None:
    """SIGKILL every live process whose environment holds `key=value`."""
    for pid in processes_with_env(key, value):
        _signal(pid, signal.SIGKILL)
