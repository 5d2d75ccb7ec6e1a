"""Peak memory and wall time of a `flwr run` simulation with many virtual clients (run by hand).

    .venv/bin/python bench/sim_memory.py --clients 500 --rounds 2

Samples, every 0.5 s, the summed RSS of every process of the run (found by its private
FLWR_HOME in its environment, via psutil: SuperLink, simulation runtime, Ray workers) and prints the
peak beside a 20-client run measured in the same invocation as the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.processes import processes_with_env  # noqa: E402
from cli.simulation import run_simulation  # noqa: E402


def _rss_bytes(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def run_once(clients: int, rounds: int, data_dir: str) -> tuple[float, float, int]:
    """(wall seconds, peak summed RSS in GiB, return code) of one simulation."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "flwr-home"
        peak, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                procs = processes_with_env("FLWR_HOME", str(home))
                peak = max(peak, sum(_rss_bytes(p) for p in procs))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        config = f"data.dir='{data_dir}' output-dir='{tmp}/runs' num-rounds={rounds}"
        proc = run_simulation(REPO, config, clients, home)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        return wall, peak / 2**30, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("CERTFL_DATA", "../shared/data"))
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    base = run_once(20, args.rounds, data_dir)
    big = run_once(args.clients, args.rounds, data_dir)
    print(f"{'clients':>8} {'wall s':>8} {'peak RSS GiB':>13} {'rc':>3}")
    for n, (wall, gib, rc) in ((20, base), (args.clients, big)):
        print(f"{n:>8} {wall:>8.1f} {gib:>13.2f} {rc:>3}")
    print(f"peak memory ratio {args.clients} / 20 clients: {big[1] / base[1]:.2f}x")


if __name__ == "__main__":
    main()
