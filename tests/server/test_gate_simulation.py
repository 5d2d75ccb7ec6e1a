"""CFAT's scenario end to end: 3 of 5 clients send a gradient-masked model in one round.

Without the gate the global model's certified loss jumps by orders of magnitude; with it the
round is skipped, the global model stays bit-identical, and the benign rounds are accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.run_store import read_rounds
from tests.conftest import simulated_run

pytestmark = pytest.mark.slow  # every test here runs a real simulation

ATTACK_ROUND = 3


def _run(tmp_path: Path, data_dir: Path, name: str, gate: bool) -> list[dict]:
    overrides = (
        "num-rounds=4 train.clients-per-round=5 data.max-client-samples=500 train.local-epochs=2 "
        "train.adv-steps=3 eval.n-test=300 eval.adv-steps=5 eval.l-crt='0.1' eval.n-cert=100 "
        "data.n-cert=100 data.n-val=500 roles.malicious-fraction=0.6 roles.attack='logit-scaling' "
        f"roles.attack-start-round={ATTACK_ROUND} roles.attack-end-round={ATTACK_ROUND} "
        f"gate.enabled={'true' if gate else 'false'} gate.l-crt='0.1' gate.pgd-steps=5 "
        "gate.warmup-rounds=2 gate.metrics='clean-acc,pgd-acc,cert-loss' gate.loss-growth=2.0"
    )
    run_dir, _ = simulated_run(tmp_path, data_dir, name, overrides, supernodes=5)
    return read_rounds(run_dir / "rounds.jsonl")


def test_gate_skips_the_gradient_masked_round_and_accepts_benign_ones(
    tmp_path: Path, data_dir: Path
) -> None:
    loss = f"cert_loss@{0.1:g}"
    open_rounds = _run(tmp_path, data_dir, "open", gate=False)
    before, after = open_rounds[ATTACK_ROUND - 1], open_rounds[ATTACK_ROUND]
    assert after["aggregated"] and after["gate"] is None
    assert after["metrics"][loss] > 20 * before["metrics"][loss] > 0

    gated = _run(tmp_path, data_dir, "gated", gate=True)
    attacked = gated[ATTACK_ROUND]
    assert not attacked["aggregated"] and not attacked["gate"]["accepted"]
    assert attacked["gate"]["failed"] == [f"{loss} growth"]
    assert attacked["gate"]["metrics"][loss] > 20 * attacked["gate"]["reference"][loss]
    assert attacked["model_sha256"] == gated[ATTACK_ROUND - 1]["model_sha256"]
    benign = [r for r in gated[1:] if r["round"] != ATTACK_ROUND]
    assert all(r["aggregated"] and r["gate"]["accepted"] for r in benign)
    assert gated[-1]["model_sha256"] != attacked["model_sha256"]
