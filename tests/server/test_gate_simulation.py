"""The calibrated gate end to end (one `flwr run`): 3 of 5 clients send a gradient-masked model
(the global model with its logits scaled x100) in round 3 only. The gate measures the initial
model first, accepts every benign round, skips the attacked one with the global model left
bit-identical, and records its report (rule, checks, timings) in rounds.jsonl."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.run_store import read_rounds
from tests.conftest import simulated_run

pytestmark = pytest.mark.slow  # every test here runs a real simulation

ATTACK_ROUND = 3
LOSS = "cert_loss@0.1"


@pytest.mark.slow
def test_calibrated_gate_accepts_benign_rounds_and_skips_the_masked_one(
    tmp_path: Path, data_dir: Path
) -> None:
    overrides = (
        "num-rounds=4 train.clients-per-round=5 data.max-client-samples=500 train.local-epochs=2 "
        "train.adv-steps=3 eval.n-test=300 eval.adv-steps=5 data.n-cert=100 data.n-val=500 "
        "roles.malicious-fraction=0.6 roles.attack='logit-scaling' "
        f"roles.attack-start-round={ATTACK_ROUND} roles.attack-end-round={ATTACK_ROUND} "
        "gate.enabled=true gate.rule='calibrated' gate.shadow-rules='cfat' gate.l-crt='0.1' "
        "gate.pgd-steps=5"
    )
    run_dir, _ = simulated_run(tmp_path, data_dir, "gated", overrides, supernodes=5)
    rounds = read_rounds(run_dir / "rounds.jsonl")
    assert rounds[0]["gate"] is None and rounds[1]["gate"]["initial"][LOSS] > 0

    attacked = rounds[ATTACK_ROUND]
    gate = attacked["gate"]
    assert gate["rule"] == "calibrated" and not gate["accepted"] and not attacked["aggregated"]
    assert f"{LOSS} window" in gate["failed"]
    assert gate["metrics"][LOSS] > 20 * gate["reference"][LOSS]
    assert attacked["model_sha256"] == rounds[ATTACK_ROUND - 1]["model_sha256"]
    assert attacked["skip_reason"].startswith("gate: ")

    benign = [r for r in rounds[1:] if r["round"] != ATTACK_ROUND]
    assert all(r["aggregated"] and r["gate"]["accepted"] for r in benign), [
        r["gate"]["failed"] for r in benign
    ]
    assert rounds[-1]["model_sha256"] != attacked["model_sha256"]
    assert all(r["timings"]["gate_s"] > 0 and r["gate"]["timings"]["wall"] > 0 for r in benign)
    assert [s["rule"] for s in gate["shadow"]] == ["cfat"]
