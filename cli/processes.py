"""Child processes that are always stopped, together with every process they spawned.

Flower's SuperLink and SuperNodes spawn SuperExec, ServerApp and ClientApp processes of their
own, some in new sessions, and `flwr run` detaches a local SuperLink, so stopping a launcher's
direct children is not enough. A `ProcessGroup` watches the process tree under every process it
started (psutil, every `watch_s` seconds) and remembers each descendant it has seen, so that one
whose parent died (and which was re-parented out of the tree) is stopped all the same; every
process it starts also carries a variable naming the group in its environment, which children
inherit, to find one born and orphaned between two looks. Children start in their own session
so that a terminal's Ctrl-C reaches only the launcher, which then stops them in order.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil


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


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises KeyboardInterrupt; later ones are
    ignored, so that a second Ctrl-C cannot abort the clean-up that follows. Main thread only.

    System calls the signal lands in are restarted (a C++ writer such as torch.save's would
    otherwise fail on EINTR), and an interrupt that code inside the block swallowed (raised
    inside a C++ call that then failed with its own error) is raised again when the block ends.
    """
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.siginterrupt(sig, False)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if fired:  # the block ended without the KeyboardInterrupt: something swallowed it
        raise KeyboardInterrupt("signal received inside the block")


def alive(proc: psutil.Process) -> bool:
    """Whether `proc` (the very process, not a later one with its pid) runs and is no zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree(pid: int) -> list[psutil.Process]:
    """The live process `pid` and every live process below it."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def stop_processes(procs: Iterable[psutil.Process], grace_s: float) -> None:
    """SIGTERM every process, wait up to `grace_s` for all of them, SIGKILL the rest."""
    procs = [p for p in procs if alive(p)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in procs):
        time.sleep(0.1)
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def processes_with_env(key: str, value: str | None = None) -> list[psutil.Process]:
    """Live processes (of this user) whose environment holds `key` (set to `value`, if given)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            if key in env and (value is None or env[key] == value) and alive(proc):
                found.append(proc)
    return found


def _key(proc: psutil.Process) -> tuple[int, float]:
    return proc.pid, proc.create_time()


@dataclass
class ProcessGroup:
    """Starts named processes with logs in `log_dir`; on exit stops every process tree.

    Parameters
    ----------
    log_dir : Path
        Each process's output goes to `<log_dir>/<name>.log`.
    env : Mapping[str, str]
        The environment of every process started.
    grace_seconds : float
        How long a SIGTERM'd process may take to exit before it is SIGKILL'd.
    watch_s : float
        Seconds between two looks at the process trees.
    on_exit : Callable[[str, int], None] | None
        Called (from the watcher thread) with the name and exit code of a started process
        that exits before the group is stopped.
    """

    log_dir: Path
    env: Mapping[str, str]
    grace_seconds: float = 10.0
    watch_s: float = 0.5
    on_exit: Callable[[str, int], None] | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _last: set[str] = field(default_factory=set)
    _seen: dict[str, dict[tuple[int, float], psutil.Process]] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    marker: str = field(default_factory=lambda: f"CERTFL_GROUP_{uuid.uuid4().hex}")

    def start(
        self, name: str, argv: Sequence[str], stdout_to_log: bool = True, stop_last: bool = False
    ) -> subprocess.Popen:
        """Start `argv` in a new session; its output goes to `<log_dir>/<name>.log` (or a pipe).
        `stop_last`: stop it only after every other process (e.g. the SuperLink, so that the
        SuperNodes can still sign off)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = (self.log_dir / f"{name}.log").open("wb") if stdout_to_log else subprocess.PIPE
        proc = subprocess.Popen(
            list(argv),
            env={**self.env, self.marker: "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self._lock:
            self.procs[name] = proc
            self._seen[name] = {}
            if stop_last:
                self._last.add(name)
        self._look()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()
        return proc

    def processes(self) -> list[psutil.Process]:
        """Every live process of the group: the started ones and all seen below them."""
        self._look()
        with self._lock:
            seen = [p for by_key in self._seen.values() for p in by_key.values()]
        return [p for p in seen if alive(p)]

    def _look(self) -> None:
        """Remember every process now in the trees of the started processes."""
        with self._lock:
            started = dict(self.procs)
        for name, proc in started.items():
            found = {}
            for p in tree(proc.pid):
                with contextlib.suppress(psutil.Error):
                    found[_key(p)] = p
            with self._lock:
                self._seen[name].update(found)

    def _watch(self) -> None:
        while not self._stopping.wait(self.watch_s):
            self._look()
            with self._lock:
                exited = {
                    name: proc.returncode
                    for name, proc in self.procs.items()
                    if proc.poll() is not None and name not in self._reported
                }
                self._reported.update(exited)
            for name, code in exited.items():
                if self.on_exit is not None and not self._stopping.is_set():
                    self.on_exit(name, code)

    def stop_all(self) -> None:
        """Stop the process trees: first all but the `stop_last` ones, then those; then
        anything still carrying the group's mark. Safe to call more than once."""
        self._stopping.set()
        self._look()
        with self._lock:
            names = list(self.procs)
            first = [n for n in names if n not in self._last]
            last = [n for n in names if n in self._last]
        for wave in (first, last):
            with self._lock:
                procs = [p for n in wave for p in self._seen[n].values()]
            stop_processes(procs, self.grace_seconds)
        stop_processes(processes_with_env(self.marker), self.grace_seconds)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)  # reap our own children

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        except KeyboardInterrupt:  # a signal while stopping (`signals_interrupt` raises once)
            self.stop_all()
            raise
