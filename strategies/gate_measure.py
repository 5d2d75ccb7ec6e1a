"""Measuring a candidate model for the gate: clean and PGD accuracy on the validation set,
zonotope certified accuracy and loss on the certification set (CFAT Sec. 3, 5).

Two schedulers (`gate.scheduler`):

* `serial`: one pass over each set with torch's own threads, as the gate first did. On a busy
  2-core machine torch's two OpenMP threads spin-wait for each other whenever another process
  holds a core, and the gate then runs 10-40x slower than its work needs.
* `pool` (default): the work is cut into independent tasks (clean accuracy; PGD on blocks of
  `gate.batch-size` validation points in a seeded random order; certification of slices of the
  certification set per radius) that `gate.workers` worker processes take in queue order, each
  running torch with a single thread (strategies/gate_workers.py). A busy core then delays one
  task, not every operation of both workers.

Early verdict (`pool` with `gate.early-verdict`, given the rule's bounds): measuring stops as
soon as the verdict is known.
* Exact, no error: a certified loss is a mean of non-negative terms, so the sum over the points
  certified so far divided by N_cert is a lower bound of it: past the bound, the candidate fails.
  Likewise certified accuracy fails once even all remaining points certified could not reach its
  bound, and PGD accuracy is decided once c/N or (c + N - n)/N settles it.
* Sequential, error at most `gate.early-delta`: after n of the N validation points (a simple
  random sample without replacement, blocks in a seeded random order) with PGD accuracy p_n,
  Serfling's inequality bounds |p_n - p_N| by
      t_n = sqrt((1 - (n - 1) / N) * log(2 K / delta) / (2 n))
  with probability >= 1 - delta / K per look; with K looks (one per block) a union bound gives
  P(the early verdict differs from the full-set verdict) <= delta. The PGD accuracy check is
  decided when every PGD bound lies outside [p_n - t_n, p_n + t_n]; the metric recorded is then
  p_n, with n in `samples`.
A rejected candidate's other metrics may be partial or NaN (not measured): the verdict was known.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Protocol

import torch
from flwr.app import ArrayRecord
from torch import nn

from certify import certify_dataset
from certify.metrics import certification_metrics, chunk_size
from certify.trace import trace
from core.config import GateConfig, RunConfig
from core.data import ImageSet, to_float
from core.evasion import PGDConfig, pgd, pgd_evaluate
from core.gate_rule import Bound
from core.params import load_record
from core.seeds import torch_generator
from core.training import evaluate
from strategies.gate_workers import WorkerPool

# certification chunks of a single-threaded worker (see certify.metrics.chunk_size)
SINGLE_THREAD_CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class MeasureResult:
    """A candidate's metrics, how many points each rests on, and where the time went."""

    metrics: dict[str, float]
    samples: dict[str, int]  # points behind each metric (fewer after an early verdict)
    seconds: dict[str, float]  # busy seconds per check (clean, pgd, cert@eps) and wall
    early: str = ""  # why measuring stopped before the end ("" = measured in full)


class Measurer(Protocol):
    """Measures the model `arrays` hold; `bounds` (the rule's) allow an early verdict."""

    def __call__(
        self, arrays: ArrayRecord, server_round: int, bounds: Sequence[Bound] = ()
    ) -> MeasureResult: ...


def serfling_halfwidth(n: int, total: int, looks: int, delta: float) -> float:
    """t_n such that |p_n - p_N| <= t_n for all `looks` looks with probability >= 1 - delta,
    p_n the mean of n of `total` values in [0, 1] drawn without replacement (Serfling 1974).

    >>> round(serfling_halfwidth(1000, 5000, 10, 1e-3), 3)
    0.063
    >>> serfling_halfwidth(5000, 5000, 10, 1e-3)
    0.0
    """
    if n >= total:
        return 0.0
    return math.sqrt((1 - (n - 1) / total) * math.log(2 * looks / delta) / (2 * n))


@dataclass
class _Tally:
    """Running counts of one check (accuracy: `hits` of `n`; certified loss: `loss_sum`)."""

    total: int
    n: int = 0
    hits: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    decided: bool = False  # no more of its tasks are needed


@dataclass
class _Progress:
    """What the workers have measured so far, and whether the verdict is known."""

    tallies: dict[str, _Tally]
    bounds: Sequence[Bound]
    early: bool
    delta: float
    looks: int
    stop: str = ""

    def add(self, key: str, n: int, hits: int, loss_sum: float, seconds: float) -> None:
        t = self.tallies[key]
        t.n, t.hits, t.loss_sum, t.seconds = (
            t.n + n, t.hits + hits, t.loss_sum + loss_sum, t.seconds + seconds,
        )  # fmt: skip
        if self.early:
            self._settle(key)

    def needed(self, key: str) -> bool:
        return not self.stop and not self.tallies[key].decided

    def _settle(self, key: str) -> None:
        """Early verdicts on the check `key` feeds (see the module docstring)."""
        t = self.tallies[key]
        if key.startswith("cert@"):
            eps = key[len("cert@") :]
            lowest_loss = t.loss_sum / t.total  # the remaining points add >= 0
            highest_acc = (t.hits + t.total - t.n) / t.total  # ... if all of them certified
            for b in self.bounds:
                if b.metric == f"cert_loss@{eps}" and b.kind == "max" and lowest_loss > b.bound:
                    self.stop = f"{b.metric} {b.criterion}: exceeds {b.bound:.4g} already"
                elif b.metric == f"cert_acc@{eps}" and b.kind == "min" and highest_acc < b.bound:
                    self.stop = f"{b.metric} {b.criterion}: cannot reach {b.bound:.4g}"
        elif key == "pgd":
            half = serfling_halfwidth(t.n, t.total, self.looks, self.delta)
            p = t.hits / t.n
            low, high = max(p - half, t.hits / t.total), min(p + half, 1 - (t.n - t.hits) / t.total)
            mine = [b for b in self.bounds if b.metric == "pgd_acc"]
            if any(high < b.bound for b in mine):
                self.stop = f"pgd_acc below {max(b.bound for b in mine):.4g} (n={t.n})"
            elif all(low >= b.bound for b in mine) and t.n < t.total:
                t.decided = True


@dataclass(frozen=True)
class _Tasks:
    """Runs one measuring task on `model` (picklable: what a worker process is given)."""

    model: nn.Module
    val: ImageSet
    cert_x: torch.Tensor
    cert_y: torch.Tensor
    gate: GateConfig
    seed: int

    def attack(self) -> PGDConfig:
        gate = self.gate
        return PGDConfig(eps=gate.l_adv, steps=gate.pgd_steps, restarts=gate.pgd_restarts)

    def run(self, kind: str, arg: object, server_round: int) -> tuple[int, int, float, float]:
        """(points, hits, certified loss sum, busy seconds) of the task `kind` on `arg`."""
        t, model, gate = time.perf_counter(), self.model, self.gate
        if kind in ("clean", "pgd"):  # torch's CPU convolutions run faster channels-last
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        if kind == "clean":
            r = evaluate(model, self.val, gate.batch_size)
            return r.n, round(r.accuracy * r.n), 0.0, time.perf_counter() - t
        if kind == "pgd":
            block, index = arg  # type: ignore[misc]
            x, y = to_float(self.val.x[index]), self.val.y[index]
            x = x.contiguous(memory_format=torch.channels_last)
            generator = torch_generator(self.seed, "gate-pgd", server_round, block)
            x_adv = pgd(model, x, y, self.attack(), generator)
            with torch.no_grad():
                hits = int((model(x_adv).argmax(1) == y).sum())
            return len(y), hits, 0.0, time.perf_counter() - t
        eps, part, chunk = arg  # type: ignore[misc]
        r = certify_dataset(
            model, self.cert_x[part], self.cert_y[part], eps, method=gate.method,
            budget_bytes=gate.budget_mb * 2**20, sound_fp=gate.sound_fp, chunk=chunk,
        )  # fmt: skip
        hits = int((r.certified & r.correct).sum())
        loss_sum = float(r.worst_margin.clamp_min(0).sum())
        return len(r.correct), hits, loss_sum, time.perf_counter() - t


class CandidateMeasurer:
    """Measures a model on the validation and certification sets, for the gate.

    Parameters
    ----------
    model : nn.Module
        A private model of the run's architecture; each candidate is loaded into it.
    val, cert : ImageSet
        The validation set (clean and PGD accuracy) and the certification set.
    cfg : RunConfig
        `gate.*` (radii, PGD, scheduler, workers, early verdict), `train.adv-eps`, `seed`.
    device : torch.device
        Where to measure; the pool scheduler runs on the CPU only (a GPU measures serially).
    """

    def __init__(
        self, model: nn.Module, val: ImageSet, cert: ImageSet, cfg: RunConfig, device: torch.device
    ) -> None:
        self.model, self.val, self.cert, self.cfg, self.device = model, val, cert, cfg, device
        self.gate: GateConfig = cfg.gate
        order = torch.randperm(len(val), generator=torch_generator(cfg.seed, "gate-val-order"))
        self._val_order = order
        self._cert_x, self._cert_y = cert.tensors(device)
        self._workers: WorkerPool | None = None  # started by the first pooled measurement

    def start_workers(self) -> None:
        """Start the pool's worker processes now and wait for them (the first pooled measurement
        starts them otherwise), e.g. to keep their start-up out of a timing."""
        self._worker_pool().wait_ready()

    def _worker_pool(self) -> WorkerPool:
        """The pool, started on first use."""
        if self._workers is None:
            self._workers = WorkerPool(self._runner(), self.gate.workers)
        return self._workers

    def close(self) -> None:
        """Stop the worker processes, if any (they also stop when the measurer is collected)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    @property
    def l_adv(self) -> float:
        """L_adv of the validation PGD (its sentinel was resolved when the config was parsed)."""
        return self.gate.l_adv

    def _runner(self) -> _Tasks:
        return _Tasks(self.model, self.val, self._cert_x, self._cert_y, self.gate, self.cfg.seed)

    def __call__(
        self, arrays: ArrayRecord, server_round: int, bounds: Sequence[Bound] = ()
    ) -> MeasureResult:
        """clean_acc, pgd_acc, and cert_acc@eps / cert_loss@eps for every L_crt."""
        load_record(self.model, arrays)
        if self.gate.scheduler == "serial" or self.device.type != "cpu":
            return self._serial(server_round)
        return self._pool(server_round, bounds if self.gate.early_verdict else ())

    def _serial(self, server_round: int) -> MeasureResult:
        """One pass per check on torch's threads (the gate's original path)."""
        gate, start = self.gate, time.perf_counter()
        clean = evaluate(self.model, self.val, gate.batch_size, device=self.device)
        seconds = {"clean": time.perf_counter() - start}
        generator = torch_generator(self.cfg.seed, "gate-pgd", server_round)
        t = time.perf_counter()
        attack = self._runner().attack()
        adv = pgd_evaluate(self.model, self.val, attack, gate.batch_size, generator, self.device)
        seconds["pgd"] = time.perf_counter() - t
        metrics = {"clean_acc": clean.accuracy, "pgd_acc": adv.accuracy}
        for eps in gate.l_crt:
            t = time.perf_counter()
            metrics |= certification_metrics(
                self.model,
                self._cert_x,
                self._cert_y,
                (eps,),
                gate.method,
                gate.budget_mb * 2**20,
                gate.sound_fp,
            )
            seconds[f"cert@{eps:g}"] = time.perf_counter() - t
        seconds["wall"] = time.perf_counter() - start
        samples = {k: len(self.cert) if k.startswith("cert") else len(self.val) for k in metrics}
        return MeasureResult(metrics, samples, seconds)

    def _tasks(self, server_round: int) -> list[tuple[str, object]]:
        """Clean accuracy first, then PGD blocks and certification slices, interleaved."""
        gate = self.gate
        pgd_blocks = [
            ("pgd", (i, self._val_order[s : s + gate.batch_size]))
            for i, s in enumerate(range(0, len(self.val), gate.batch_size))
        ]
        steps = trace(self.model)
        cert_tasks = []
        for eps in gate.l_crt:
            chunk = chunk_size(
                steps, self._cert_x, eps, gate.method, gate.budget_mb * 2**20, gate.sound_fp,
                cpu_bytes=SINGLE_THREAD_CHUNK_BYTES, cpu_min=1,
            )  # fmt: skip
            # a slice holds several chunks, so each task is long next to the queue's overhead,
            # and at most an eighth of the set, so that an early verdict can cut it short
            width = min(chunk * 8, -(-len(self.cert) // 8))
            chunk = min(chunk, width)
            cert_tasks += [
                (f"cert@{eps:g}", (eps, slice(s, s + width), chunk))
                for s in range(0, len(self.cert), width)
            ]
        merged = []
        for i in range(max(len(pgd_blocks), len(cert_tasks))):
            merged += pgd_blocks[i : i + 1] + cert_tasks[i : i + 1]
        return [("clean", None), *merged]

    def _pool(self, server_round: int, bounds: Sequence[Bound]) -> MeasureResult:
        gate, start = self.gate, time.perf_counter()
        tasks = deque(self._tasks(server_round))
        n_val, n_cert = len(self.val), len(self.cert)
        tallies = {"clean": _Tally(n_val), "pgd": _Tally(n_val)}
        tallies |= {f"cert@{eps:g}": _Tally(n_cert) for eps in gate.l_crt}
        looks = sum(1 for kind, _ in tasks if kind == "pgd")
        progress = _Progress(tallies, bounds, bool(bounds), gate.early_delta, looks)
        workers = self._worker_pool()
        in_flight: dict[Future, str] = {}

        def submit_next() -> None:
            while tasks:
                kind, arg = tasks.popleft()
                if progress.needed(kind):
                    in_flight[workers.submit(kind, arg, server_round)] = kind
                    return

        for _ in range(gate.workers):
            submit_next()
        while in_flight:  # every task in flight finishes before the model may change
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                progress.add(in_flight.pop(future), *future.result())
                submit_next()
        return self._result(tallies, progress.stop, time.perf_counter() - start)

    def _result(self, tallies: dict[str, _Tally], stop: str, wall: float) -> MeasureResult:
        def mean(value: float, n: int) -> float:
            return value / n if n else float("nan")

        metrics = {
            "clean_acc": mean(tallies["clean"].hits, tallies["clean"].n),
            "pgd_acc": mean(tallies["pgd"].hits, tallies["pgd"].n),
        }
        samples = {"clean_acc": tallies["clean"].n, "pgd_acc": tallies["pgd"].n}
        for eps in self.gate.l_crt:
            t = tallies[f"cert@{eps:g}"]
            metrics[f"cert_acc@{eps:g}"] = mean(t.hits, t.n)
            metrics[f"cert_loss@{eps:g}"] = mean(t.loss_sum, t.n)
            samples[f"cert_acc@{eps:g}"] = samples[f"cert_loss@{eps:g}"] = t.n
        seconds = {k: t.seconds for k, t in tallies.items()} | {"wall": wall}
        pgd = tallies["pgd"]
        early = stop or (f"pgd_acc decided at n={pgd.n}" if pgd.decided else "")
        return MeasureResult(metrics, samples, seconds, early)
