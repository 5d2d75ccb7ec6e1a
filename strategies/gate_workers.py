"""The gate's worker processes (`gate.scheduler=pool`): `gate.workers` long-lived processes,
each running torch on one thread, that take measuring tasks (clean accuracy, a PGD block, a
certification slice) and return their counts.

Processes, not threads: in the server process, two worker threads spent 4.2 busy seconds per
round certifying 1000 MNIST points (conv-small, eps 0.1; `bench/gate_cost.py`), two worker
processes 3.4, and the gate's time fell from 2.4 to 2.0 s per round. In a bare script the two
certify equally fast (2.6 ms per point alone, 3.4 in each of two threads or two processes), so
the difference comes from the server process (likely its own threads, Flower's, taking the
interpreter lock that the certifier's thousands of small torch calls take and release; not
isolated).

The model's parameters and the data sets live in shared memory: a worker unpickles views of
the parent's tensors, so loading the next candidate into the parent's model (in place, with no
task in flight) is all it takes to hand it to every worker. The processes are spawned (no
fork of a server with gRPC threads) once, at the first measurement, and stop with the pool.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol

import torch
import torch.multiprocessing
from torch import nn


class TaskRunner(Protocol):
    """What a worker runs: one task, given by kind and argument, for one server round."""

    model: nn.Module

    def run(self, kind: str, arg: object, server_round: int) -> tuple[int, int, float, float]:
        """(points, hits, loss sum, busy seconds) of the task."""
        ...


_RUNNER: TaskRunner | None = None  # this worker process's runner


def _start(runner: TaskRunner) -> None:
    global _RUNNER
    torch.set_num_threads(1)
    runner.model.eval()
    for p in runner.model.parameters():
        p.requires_grad_(False)
    _RUNNER = runner


def _started_pid() -> int:
    assert _RUNNER is not None, "a gate worker ran a task before its start"
    return os.getpid()


def _run(kind: str, arg: object, server_round: int) -> tuple[int, int, float, float]:
    assert _RUNNER is not None, "a gate worker ran a task before its start"
    return _RUNNER.run(kind, arg, server_round)


class WorkerPool:
    """`workers` processes running tasks of `runner`, whose model and tensors are shared.

    Parameters
    ----------
    runner : TaskRunner
        Picklable; its tensors (the model's state included) are moved to shared memory, so the
        parent's in-place updates of the model reach every worker.
    workers : int
        Number of processes.
    """

    def __init__(self, runner: TaskRunner, workers: int) -> None:
        for t in runner.model.state_dict().values():
            t.share_memory_()
        context = torch.multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start, initargs=(runner,)
        )
        self._workers = workers
        self._finalizer = weakref.finalize(self, self._executor.shutdown, cancel_futures=True)

    def wait_ready(self) -> None:
        """Return once every worker has started: no-op tasks until each process has run one
        (a worker that started first may take several)."""
        started: set[int] = set()
        while len(started) < self._workers:
            tasks = [self._executor.submit(_started_pid) for _ in range(self._workers)]
            started |= {t.result() for t in tasks}

    def submit(self, kind: str, arg: object, server_round: int) -> Future:
        """Run one task in the first free worker."""
        return self._executor.submit(_run, kind, arg, server_round)

    def close(self) -> None:
        """Stop the workers (after the tasks in flight)."""
        self._finalizer()
