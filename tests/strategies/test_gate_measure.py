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
from strategies.gate_measure import CandidateMeasurer, serfling_halfwidth


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


def test_serfling_halfwidth_shrinks_to_zero_on_the_whole_set() -> None:
    widths = [serfling_halfwidth(n, 5000, 10, 1e-3) for n in (500, 1000, 2500, 5000)]
    assert widths == sorted(widths, reverse=True) and widths[-1] == 0.0
