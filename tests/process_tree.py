"""Which processes a test started, found by process tree: every process ever seen below the
processes the test watches, looked at every few tenths of a second while it runs."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from types import TracebackType

import psutil


class TreeWatch:
    """Remembers each process seen in the trees under `roots` (and roots added later), so that
    one re-parented away when its parent died still counts; `left()` lists those still alive."""

    def __init__(self, *roots: int, every_s: float = 0.2) -> None:
        self.roots = list(roots)
        self.every_s = every_s
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, pid: int) -> None:
        """Watch the tree under `pid` too."""
        self.roots.append(pid)
        self.look()

    def look(self) -> None:
        """Remember every process now in the watched trees."""
        for pid in list(self.roots):
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        self.seen[(proc.pid, proc.create_time())] = proc

    def left(self) -> list[psutil.Process]:
        """The processes seen that still run (zombies waiting to be reaped do not count)."""
        out = []
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
        return out

    def descendants_seen(self) -> int:
        """How many processes were seen besides the roots."""
        return sum(p.pid not in self.roots for p in self.seen.values())

    def kill_left(self) -> None:
        """SIGKILL whatever is left (clean-up after a failed test)."""
        for proc in self.left():
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.look()

    def __enter__(self) -> TreeWatch:
        self.look()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def watched(argv: list[str], **popen: object) -> Iterator[tuple[subprocess.Popen, TreeWatch]]:
    """Start `argv` (output piped, as text) and watch its process tree. On leaving the block the
    watch must have seen processes and none of them may still run; when the block fails, the
    process gets SIGTERM (its own clean-up) and then everything seen is killed, so a failed
    test leaves nothing behind either."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )
    with TreeWatch(proc.pid) as watch:
        try:
            yield proc, watch
        except BaseException:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
            watch.look()
            watch.kill_left()
            proc.kill()
            raise
    assert_nothing_left(watch)


def assert_nothing_left(watch: TreeWatch) -> None:
    """Fail, naming them, if processes the watch saw still run (and kill them); also fail if it
    saw no process at all (then it checked nothing)."""
    time.sleep(1.0)
    watch.look()
    left = watch.left()
    watch.kill_left()
    assert watch.descendants_seen() > 0, "the watch saw no process: it checked nothing"
    assert left == [], f"processes left running: {[(p.pid, p.name()) for p in left]}"
