"""The gate's measurer: the pool scheduler measures what the serial pass measures, and stops
early only when the verdict is known (exactly for certification, within delta for PGD)."""

from __future__ import annotations

import math

import pytest
import torch

from core.config import RunConfig
from core.data import load_splits
from core.gate_rule import Bound
from core.models import build_model
from core.params import model_to_record
from strategies.gate_measure import CandidateMeasurer, accuracy_verdict


@pytest.fixture(scope="module")
def setup(data_dir):
    flat = {"data.dir": str(data_dir), "data.n-cert": 200, "data.n-val": 200, "model.name": "mlp",
            "gate.l-crt": "0.02", "gate.batch-size": 50, "gate.pgd-steps": 3}  # fmt: skip
    cfg = RunConfig.from_flat(flat)
    splits = load_splits(cfg.data)
    model = build_model("mlp", splits.spec, seed=1)
    return flat, splits, model_to_record(model)


def _measurer(flat, splits, **more):
    cfg = RunConfig.from_flat({**flat, **more})
    model = build_model("mlp", splits.spec)
    return CandidateMeasurer(model, splits.val, splits.cert, cfg, torch.device("cpu"))


def test_pool_measures_what_the_serial_pass_measures(setup) -> None:
    flat, splits, arrays = setup
    serial = _measurer(flat, splits, **{"gate.scheduler": "serial"})(arrays, 1)
    pooled = _measurer(flat, splits)(arrays, 1)
    assert pooled.early == "" and pooled.samples["pgd_acc"] == 200
    assert pooled.metrics["clean_acc"] == serial.metrics["clean_acc"]
    for key in ("cert_acc@0.02", "cert_loss@0.02"):
        assert math.isclose(pooled.metrics[key], serial.metrics[key], rel_tol=1e-5), key
    # PGD draws its random starts per block in the pool: the same attack, other noise
    assert abs(pooled.metrics["pgd_acc"] - serial.metrics["pgd_acc"]) < 0.05
    assert set(pooled.seconds) >= {"clean", "pgd", "cert@0.02", "wall"}


def test_early_verdicts_stop_as_soon_as_the_bound_decides(setup) -> None:
    flat, splits, arrays = setup
    measure = _measurer(flat, splits, **{"gate.workers": 1})  # one worker: tasks in queue order
    full = measure(arrays, 1)
    loss = full.metrics["cert_loss@0.02"]
    assert loss > 0
    # an impossible loss bound fails exactly after the first certification slice
    fail = measure(arrays, 1, [Bound("cert_loss@0.02", loss / 100, "max", "window", loss)])
    assert "cert_loss@0.02 window" in fail.early
    assert fail.samples["cert_loss@0.02"] < 200 and fail.metrics["cert_loss@0.02"] > loss / 100
    assert fail.samples["pgd_acc"] < 200  # the rest of the queue was dropped
    # a PGD bound far below the accuracy is settled before all 200 points are attacked
    pgd_ok = measure(arrays, 1, [Bound("pgd_acc", 0.0, "min", "floor")])
    assert pgd_ok.samples["pgd_acc"] < 200 and pgd_ok.early.startswith("pgd_acc decided")
    assert pgd_ok.samples["cert_loss@0.02"] == 200  # certification is never cut short on a pass
    # clean accuracy too is decided block by block: a bound of 1.0 fails at the first miss
    clean_fail = measure(arrays, 1, [Bound("clean_acc", 1.0, "min", "floor")])
    assert clean_fail.early.startswith("clean_acc below 1 (n=")
    assert clean_fail.samples["clean_acc"] < 200 and clean_fail.metrics["clean_acc"] < 1.0


def test_a_decided_check_wastes_no_block_on_a_second_worker(setup) -> None:
    """With two workers, a PGD block is not started while another is in flight and
    certification slices remain: once the first block decides, no second one was run."""
    flat, splits, arrays = setup
    measure = _measurer(flat, splits, **{"gate.workers": 2})
    try:
        r = measure(arrays, 1, [Bound("pgd_acc", 0.0, "min", "floor")])
    finally:
        measure.close()
    assert r.samples["pgd_acc"] == 50 and r.early.startswith("pgd_acc decided at n=50")
    assert r.samples["cert_loss@0.02"] == 200


def test_the_workers_measure_each_new_candidate_not_the_first(setup) -> None:
    """The worker processes see the parent's model through shared memory: a second candidate
    loaded into the same measurer is measured as a fresh measurer measures it."""
    flat, splits, first = setup
    second = model_to_record(build_model("mlp", splits.spec, seed=2))
    reused = _measurer(flat, splits)
    try:
        reused.start_workers()  # started before any candidate was loaded
        a, b = reused(first, 1), reused(second, 2)
    finally:
        reused.close()
    fresh = _measurer(flat, splits)
    try:
        b_fresh = fresh(second, 2)
    finally:
        fresh.close()
    assert a.metrics["cert_loss@0.02"] != b.metrics["cert_loss@0.02"]
    for key in ("clean_acc", "pgd_acc", "cert_acc@0.02", "cert_loss@0.02"):
        assert b.metrics[key] == b_fresh.metrics[key], key


def test_the_sequential_accuracy_verdict_errs_with_probability_at_most_alpha() -> None:
    """Exhaustively, on a small set: for every true number of hits K and sample size n, the
    probability (hypergeometric, from math.comb) that the verdict contradicts K / N >= bound."""
    total, bound, alpha = 60, 0.3, 0.05
    for n in (5, 20, 40, 59):
        for good in range(total + 1):
            truth = good / total >= bound
            wrong = sum(
                math.comb(good, h) * math.comb(total - good, n - h) / math.comb(total, n)
                for h in range(n + 1)
                if accuracy_verdict(h, n, total, bound, alpha) not in (None, truth)
            )
            assert wrong <= alpha, (n, good, wrong)
        decided = [accuracy_verdict(h, n, total, bound, alpha) for h in range(n + 1)]
        if n >= 20:  # a large enough sample decides its extremes
            assert decided[0] is False and decided[-1] is True
        else:  # 0 hits of 5 is likely (p 0.16) from a set at the bound: undecided
            assert decided[0] is None and decided[-1] is True


def test_the_exact_verdict_needs_fewer_points_than_serfling() -> None:
    """Where Serfling's bound (the first sequential test) needed 4000 of 5000 points to tell a
    PGD accuracy of 0.15 from a bound of 0.13, the exact test needs 2500 (blocks of 500)."""

    def first_decided(decides) -> int:  # noqa: ANN001
        return next(n for n in range(500, 5001, 500) if decides(n, round(0.15 * n)))

    def serfling(n: int, hits: int) -> bool:
        half = math.sqrt((1 - (n - 1) / 5000) * math.log(2 * 10 / 1e-3) / (2 * n))
        return n == 5000 or not hits / n - half < 0.13 <= hits / n + half

    exact = first_decided(lambda n, h: accuracy_verdict(h, n, 5000, 0.13, 1e-3 / 10) is not None)
    assert (exact, first_decided(serfling)) == (2500, 4000)
    assert accuracy_verdict(round(0.15 * 2500), 2500, 5000, 0.13, 1e-4) is True
