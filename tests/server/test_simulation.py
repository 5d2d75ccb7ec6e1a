"""A real `flwr run` simulation: 20 virtual clients, PGD adversarial training on real MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.run_store import load_checkpoint, read_rounds
from tests.conftest import simulated_run

pytestmark = pytest.mark.slow  # every test here runs a real simulation


def test_flwr_run_simulation_trains_and_writes_its_run_directory(
    tmp_path: Path, data_dir: Path
) -> None:
    overrides = (
        "num-rounds=3 train.clients-per-round=5 data.max-client-samples=400 train.local-epochs=2 "
        "train.adv-steps=3 train.adv-eps=0.1 eval.n-test=300 eval.adv-steps=5 agg.rule='median' "
        "roles.malicious-fraction=0.0 gate.enabled=false"
    )
    run_dir, output = simulated_run(tmp_path, data_dir, "sim", overrides, supernodes=20)
    rounds = read_rounds(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["aggregated"] and r["accepted"] == 5 and not r["failures"] for r in rounds[1:])
    assert rounds[-1]["metrics"]["clean_acc"] > rounds[0]["metrics"]["clean_acc"] + 0.3
    assert len({r["model_sha256"] for r in rounds}) == 4
    assert "[certfl] round   3/3" in output
    assert (run_dir / "metrics.png").stat().st_size > 0
    final = load_checkpoint(run_dir / "final.pt")
    assert final["round"] == 3 and final["model"] == "conv-small"
    assert (run_dir / "best.pt").is_file() and (run_dir / "config.json").is_file()
