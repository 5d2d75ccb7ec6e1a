"""Measuring a candidate model for the gate: clean and PGD accuracy on the validation set,
zonotope certified accuracy and loss on the certification set (CFAT Sec. 3, 5).

Two schedulers (`gate.scheduler`):

* `serial`: one pass over each set with torch's own threads, as the gate first did. On a busy
  2-core machine torch's two OpenMP threads spin-wait for each other whenever another process
  holds a core, and the gate then runs 10-40x slower than its work needs.
* `pool` (default): the work is cut into independent tasks (clean accuracy and PGD on blocks of
  `gate.batch-size` validation points in a seeded random order; certification of slices of the
  certification set per radius) that `gate.workers` worker processes take in queue order, each
  running torch with a single thread (strategies/gate_workers.py). A busy core then delays one
  task, not every operation of both workers. While certification slices remain, a sequential
  check (below) has one block in flight at a time: the verdict it brings may save the next.

Early verdict (`pool` with `gate.early-verdict`, given the rule's bounds): measuring stops as
soon as the verdict is known.
* Exact, no error: a certified loss is a mean of non-negative terms, so the sum over the points
  certified so far divided by N_cert is a lower bound of it: past the bound, the candidate fails.
  Likewise certified accuracy fails once even all remaining points certified could not reach its
  bound.
* Sequential, error at most `gate.early-delta`, for clean and PGD accuracy alike: after n of
  the N validation points (a simple random sample without replacement, blocks in a seeded
  random order) with h hits, the number of hits is hypergeometric given the K hits of the whole
  set. The check "accuracy >= b" is decided as passed once even K_b - 1 = ceil(bN) - 1 hits (the
  most a failing set has) would give h or more hits with probability <= alpha, and as failed
  once K_b hits (the fewest a passing set has) would give h or fewer with probability <= alpha;
  the hypergeometric law is monotone in K, so these are the worst cases (h >= K_b, or
  h + N - n < K_b, settles it with no error). With alpha = delta / (2 looks x bounds), one look
  per block of either check, a union bound gives P(an early verdict differs from the full-set
  verdict) <= delta.
  The metric recorded is then h / n, with n in `samples`. The exact test decides where
  Serfling's bound (the first version here) still hesitates, most where accuracy is far from
  1/2 (an accuracy of 0.15 against a bound of 0.13, 5000 points in blocks of 500: 2500 points
  where Serfling needed 4000).
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
# points per forward/backward call of a worker's PGD and clean accuracy, whatever the block:
# the activations then stay in the caches (one thread, 10-step PGD on 500 points: cifar-cnn
# 4.5 s in one call, 3.0 s in calls of 64; conv-small 0.29 s either way)
CALL_POINTS = 64


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


def hypergeom_tail(k: int, total: int, good: int, n: int, upper: bool) -> float:
    """P(X >= k) if `upper` else P(X <= k), X the good items among `n` drawn without
    replacement from `total` items of which `good` are good (exact, in log space).

    >>> round(hypergeom_tail(4, 10, 5, 5, upper=True), 5)  # (C(5,4) C(5,1) + 1) / C(10,5)
    0.10317
    >>> hypergeom_tail(0, 10, 5, 5, upper=True), hypergeom_tail(6, 10, 5, 5, upper=True)
    (1.0, 0.0)
    """
    lo, hi = max(0, n - (total - good)), min(n, good)
    ks = range(max(k, lo), hi + 1) if upper else range(lo, min(k, hi) + 1)
    if len(ks) == 0:
        return 0.0

    def log_choose(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    logs = [log_choose(good, i) + log_choose(total - good, n - i) for i in ks]
    top = max(logs)
    log_tail = top + math.log(sum(math.exp(v - top) for v in logs)) - log_choose(total, n)
    return min(1.0, math.exp(log_tail))


def accuracy_verdict(hits: int, n: int, total: int, bound: float, alpha: float) -> bool | None:
    """Whether the accuracy over all `total` points is >= `bound`, judged from `hits` of the
    first `n` of a random order, with error probability <= alpha; None while undecided.

    >>> accuracy_verdict(400, 2500, 5000, 0.13, 1e-4)  # 0.16 on half the set: above 0.13
    True
    >>> accuracy_verdict(340, 2500, 5000, 0.13, 1e-4) is None  # 0.136: too close to tell
    True
    >>> accuracy_verdict(650, 5000, 5000, 0.13, 1e-4)  # the whole set: exact
    True
    """
    passing = min(max(math.ceil(bound * total), 0), total + 1)  # fewest hits of a passing set,
    while passing > 0 and (passing - 1) / total >= bound:  # as the rule compares: K / N >= bound
        passing -= 1
    while passing <= total and passing / total < bound:
        passing += 1
    if passing == 0:
        return True
    if passing > total:
        return False
    if hypergeom_tail(hits, total, passing - 1, n, upper=True) <= alpha:
        return True
    if hypergeom_tail(hits, total, passing, n, upper=False) <= alpha:
        return False
    return None


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
        elif key in ("clean", "pgd"):
            metric = f"{key}_acc"
            mine = [b for b in self.bounds if b.metric == metric]
            alpha = self.delta / (2 * self.looks * max(1, len(mine)))
            verdicts = [accuracy_verdict(t.hits, t.n, t.total, b.bound, alpha) for b in mine]
            # the value recorded, hits / n, must tell the same (it does but where n is near N)
            verdicts = [v if v is None or v == b.admits(t.hits / t.n) else None
                        for b, v in zip(mine, verdicts, strict=True)]  # fmt: skip
            if False in verdicts:
                failed = max(b.bound for b, v in zip(mine, verdicts, strict=True) if v is False)
                self.stop = f"{metric} below {failed:.4g} (n={t.n})"
            elif all(verdicts) and t.n < t.total:
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
            block, index = arg  # type: ignore[misc]
            generator = torch_generator(self.seed, "gate-pgd", server_round, block)
            hits = 0
            for part in index.split(CALL_POINTS):
                x, y = to_float(self.val.x[part]), self.val.y[part]
                x = x.contiguous(memory_format=torch.channels_last)
                if kind == "pgd":
                    x = pgd(model, x, y, self.attack(), generator)
                with torch.no_grad():
                    hits += int((model(x).argmax(1) == y).sum())
            return len(index), hits, 0.0, time.perf_counter() - t
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

    def _val_blocks(self, kind: str) -> list[tuple[str, object]]:
        """Clean or PGD accuracy on blocks of `gate.batch-size` validation points, in the seeded
        random order."""
        size = self.gate.batch_size
        return [
            (kind, (i, self._val_order[s : s + size]))
            for i, s in enumerate(range(0, len(self.val), size))
        ]

    def _cert_slices(self) -> list[tuple[str, object]]:
        """Certification slices of the set per radius, chunks sized by a dry run (on one
        thread: the workers hold the cores meanwhile)."""
        gate = self.gate
        steps = trace(self.model)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            chunks = [
                chunk_size(
                    steps,
                    self._cert_x,
                    eps,
                    gate.method,
                    gate.budget_mb * 2**20,
                    gate.sound_fp,
                    cpu_bytes=SINGLE_THREAD_CHUNK_BYTES,
                    cpu_min=1,
                )
                for eps in gate.l_crt
            ]
        finally:
            torch.set_num_threads(threads)
        tasks = []
        for eps, chunk in zip(gate.l_crt, chunks, strict=True):
            # a slice holds several chunks, so each task is long next to the queue's overhead,
            # and at most an eighth of the set, so that an early verdict can cut it short
            width = min(chunk * 8, -(-len(self.cert) // 8))
            chunk = min(chunk, width)
            tasks += [
                (f"cert@{eps:g}", (eps, slice(s, s + width), chunk))
                for s in range(0, len(self.cert), width)
            ]
        return tasks

    def _pool(self, server_round: int, bounds: Sequence[Bound]) -> MeasureResult:
        gate, start = self.gate, time.perf_counter()
        n_val, n_cert = len(self.val), len(self.cert)
        tallies = {"clean": _Tally(n_val), "pgd": _Tally(n_val)}
        tallies |= {f"cert@{eps:g}": _Tally(n_cert) for eps in gate.l_crt}
        clean_blocks, pgd_blocks = self._val_blocks("clean"), self._val_blocks("pgd")
        progress = _Progress(tallies, bounds, bool(bounds), gate.early_delta, len(pgd_blocks))
        workers = self._worker_pool()
        # clean, PGD and certification tasks interleaved (clean ones are short: two at a time);
        # the workers start on the first ones while this process sizes the certification chunks
        tasks = deque(
            task
            for i in range(len(pgd_blocks))
            for task in clean_blocks[2 * i : 2 * i + 2] + pgd_blocks[i : i + 1]
        )
        in_flight: dict[Future, str] = {}
        certifying = True  # certification slices remain (or are still to be planned)

        def submit_next() -> None:
            """The first needed task, but at most one block of a sequential check (clean, PGD)
            at a time while certification slices remain: the verdict that block brings may make
            the next one unnecessary, and the other workers certify meanwhile."""
            busy = set(in_flight.values())
            for index, (kind, arg) in enumerate(tasks):
                sequential = not kind.startswith("cert@")
                if progress.needed(kind) and not (sequential and certifying and kind in busy):
                    del tasks[index]
                    in_flight[workers.submit(kind, arg, server_round)] = kind
                    return

        for _ in range(gate.workers):
            submit_next()
        cert, later = self._cert_slices(), list(tasks)
        tasks.clear()
        tasks.extend(
            task
            for i in range(max(len(later), len(cert)))
            for task in later[2 * i : 2 * i + 2] + cert[i : i + 1]
        )
        certifying = bool(cert)
        for _ in range(gate.workers - len(in_flight)):
            submit_next()
        while in_flight:  # every task in flight finishes before the model may change
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                progress.add(in_flight.pop(future), *future.result())
                certifying = any(kind.startswith("cert@") for kind, _ in tasks)
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
        decided = [f"{k}_acc decided at n={tallies[k].n}" for k in ("pgd", "clean")
                   if tallies[k].decided]  # fmt: skip
        return MeasureResult(metrics, samples, seconds, stop or ", ".join(decided))
