"""CFAT Sec. 5.2 end to end: against a gate that certifies only 20 points, 3 of 5 colluders running
`adaptive-cert` get a distilled model accepted; PGD on z / T shows what the gate let through."""

from __future__ import annotations

from pathlib import Path

import pytest

from attacks.collusion import read_ledger
from server.run_store import read_rounds
from tests.conftest import simulated_run

pytestmark = pytest.mark.slow  # every test here runs a real simulation

ATTACK_ROUND = 3


def test_adaptive_attack_passes_a_gate_with_a_tiny_certification_set(
    tmp_path: Path, data_dir: Path
) -> None:
    overrides = (
        f"num-rounds={ATTACK_ROUND} model.name='mlp' train.clients-per-round=5 "
        "data.max-client-samples=500 train.local-epochs=2 train.adv-steps=3 eval.adv-eps=0.2 "
        "eval.n-test=300 data.n-cert=20 data.n-val=500 roles.malicious-fraction=0.6 "
        "roles.attack='adaptive-cert' roles.min-colluders=3 attack.rendezvous-s=5.0 "
        f"roles.attack-start-round={ATTACK_ROUND} attack.adaptive-eps-start=0.01 "
        "attack.adaptive-seconds=300 gate.enabled=true gate.l-crt='0.03' gate.pgd-steps=5 "
        "gate.rule='cfat' gate.warmup-rounds=2"
    )
    run_dir, _ = simulated_run(tmp_path, data_dir, "adaptive", overrides, supernodes=5)
    rounds = read_rounds(run_dir / "rounds.jsonl")
    truth = read_ledger(run_dir, "ground_truth.jsonl")
    assert {(e["round"], e["attacked"]) for e in truth} == {(ATTACK_ROUND, True)}, truth

    attacked = rounds[ATTACK_ROUND]
    assert attacked["aggregated"] and attacked["gate"]["accepted"], attacked["gate"]
    before, after = rounds[ATTACK_ROUND - 1]["metrics"], attacked["metrics"]
    assert after["pgd_acc"] > 0.5 and after["pgd_t_acc"] < 0.15, after
    assert before["pgd_t_acc"] > before["pgd_acc"] - 0.1  # the honest model masked nothing
