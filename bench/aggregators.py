"""Time the aggregation rules on K updates of P = 1M float32, against our mean and Flower.

Run by hand: `.venv/bin/python bench/aggregators.py`. For K in {10, 50} it prints, per rule,
the median time of our function (through the registry the Flower adapter uses), its ratio to
our weighted mean, and, where Flower 1.36 ships the rule, the time of the Flower strategy's
`aggregate_train` on the same replies (as models: global + update) and Flower / ours. Flower's
time includes decoding each reply's arrays from bytes; the "decode" row measures that part.
f is the largest Bulyan allows, (K - 3) // 4, for every rule that takes one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from core.config import AggregationConfig
from core.wire import ARRAYS, METRICS, NUM_EXAMPLES
from strategies.aggregators import RULES

P = 1_000_000
KS = (10, 50)
REPEATS = 7  # ours
FLOWER_REPEATS = 2  # Flower's are slow; each repeat needs fresh replies


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def replies(models: np.ndarray, counts: np.ndarray) -> list[Message]:
    """One Flower train reply per model, carrying its example count."""
    return [
        Message(
            RecordDict(
                {
                    ARRAYS: ArrayRecord({"w": Array(model)}),
                    METRICS: MetricRecord({NUM_EXAMPLES: int(n)}),
                }
            ),
            dst_node_id=i + 1,
            message_type="train",
        )
        for i, (model, n) in enumerate(zip(models, counts, strict=True))
    ]


def timed_flower(strategy: object, models: np.ndarray, counts: np.ndarray) -> float:
    """Median time of strategy.aggregate_train on fresh replies (Flower consumes them)."""
    times = []
    for _ in range(FLOWER_REPEATS):
        fresh = replies(models, counts)
        start = time.perf_counter()
        strategy.aggregate_train(1, fresh)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flower_strategies(cfg: AggregationConfig, k: int) -> dict[str, object]:
    """Flower's built-ins for the rules it ships, configured like ours."""
    return {
        "median": FedMedian(),
        "trimmed-mean": FedTrimmedAvg(beta=cfg.beta),
        "krum": Krum(num_malicious_nodes=cfg.f),
        "multi-krum": MultiKrum(num_malicious_nodes=cfg.f, num_nodes_to_select=k - cfg.f),
        "bulyan": Bulyan(num_malicious_nodes=cfg.f),
    }


def bench_k(k: int) -> list[tuple[str, float | None, float | None]]:
    """(rule, our seconds, Flower seconds) for K replies; None where there is no such time."""
    rng = np.random.default_rng(k)
    global_flat = (0.05 * rng.standard_normal(P)).astype(np.float32)
    u = (0.01 * rng.standard_normal((k, P))).astype(np.float32)
    counts = rng.integers(100, 300, k)
    cfg = AggregationConfig(f=(k - 3) // 4, beta=0.2, m=0, tau=1.0, noise_std=0.01)
    x, w = torch.from_numpy(u), torch.from_numpy(counts.astype(np.float32))
    generator = torch.Generator().manual_seed(0)
    flower = flower_strategies(cfg, k)
    models = global_flat + u
    rows: list[tuple[str, float | None, float | None]] = []
    for name, rule in RULES.items():
        ours = timed(lambda rule=rule: rule(x, w, cfg, generator), REPEATS)
        theirs = timed_flower(flower[name], models, counts) if name in flower else None
        rows.append((name, ours, theirs))
    fresh = replies(models, counts)
    decode = timed(lambda: [m.content[ARRAYS]["w"].numpy() for m in fresh], FLOWER_REPEATS)
    rows.append(("(Flower decode)", None, decode))
    return rows


def cell(value: float | None, spec: str, width: int) -> str:
    """A table cell: the formatted value, or a dash."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def main() -> None:
    """Print one table per K."""
    print(f"P = {P:,} float32, torch threads = {torch.get_num_threads()}")
    for k in KS:
        rows = bench_k(k)
        mean = rows[0][1]
        assert mean is not None
        print(f"\nK = {k}, f = {(k - 3) // 4}")
        print(f"{'rule':<17}{'ours s':>9}{'/ mean':>8}{'Flower s':>10}{'Flower/ours':>13}")
        for name, ours, theirs in rows:
            ratio = None if ours is None else ours / mean
            speedup = None if ours is None or theirs is None else theirs / ours
            print(
                f"{name:<17}{cell(ours, '.4f', 9)}{cell(ratio, '.2f', 8)}"
                f"{cell(theirs, '.4f', 10)}{cell(speedup, '.1f', 12)}{'x' if speedup else ' '}"
            )


if __name__ == "__main__":
    main()
