"""Issue 5's end-to-end scenario: 3 of 5 colluders send a defensively distilled model under
median aggregation, once they see that 3 of them share a round.

Without the gate the median returns their model: PGD at T = 1 still looks fine, PGD on z / T
(the bypass) collapses. With the gate the round is skipped and the model stays bit-identical.
The colluders' ground truth lands in the run directory; the strategy never saw it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attacks.collusion import read_ledger
from server.run_store import read_rounds
from tests.conftest import simulated_run

pytestmark = pytest.mark.slow  # every test here runs a real simulation

ATTACK_ROUND = 3
COLLUDERS = 3


def _run(tmp_path: Path, data_dir: Path, name: str, gate: bool) -> tuple[list[dict], list[dict]]:
    overrides = (
        "num-rounds=4 train.clients-per-round=5 data.max-client-samples=500 train.local-epochs=2 "
        "train.adv-steps=3 eval.adv-eps=0.2 eval.n-test=300 eval.adv-steps=10 eval.l-crt='' "
        "data.n-cert=100 "
        "data.n-val=500 roles.malicious-fraction=0.6 roles.attack='distillation' "
        f"roles.min-colluders={COLLUDERS} attack.rendezvous-s=5.0 "
        f"roles.attack-start-round={ATTACK_ROUND} roles.attack-end-round={ATTACK_ROUND} "
        f"gate.enabled={'true' if gate else 'false'} gate.l-crt='0.1' gate.pgd-steps=5 "
        "gate.warmup-rounds=2 gate.metrics='clean-acc,pgd-acc,cert-loss' gate.loss-growth=2.0"
    )
    run_dir, _ = simulated_run(tmp_path, data_dir, name, overrides, supernodes=5)
    return read_rounds(run_dir / "rounds.jsonl"), read_ledger(run_dir, "ground_truth.jsonl")


def test_distillation_compromises_median_without_the_gate_and_is_blocked_with_it(
    tmp_path: Path, data_dir: Path
) -> None:
    open_rounds, truth = _run(tmp_path, data_dir, "open", gate=False)
    assert len(truth) == COLLUDERS and all(e["attacked"] for e in truth), truth
    assert {e["round"] for e in truth} == {ATTACK_ROUND}
    assert all(len(e["coalition"]) == COLLUDERS for e in truth)
    before, after = open_rounds[ATTACK_ROUND - 1]["metrics"], open_rounds[ATTACK_ROUND]["metrics"]
    assert before["pgd_t_acc"] > before["pgd_acc"] - 0.1  # honest models mask no gradients
    assert after["clean_acc"] > 0.8  # the median returned a working classifier ...
    assert after["pgd_acc"] > before["pgd_acc"]  # ... that plain PGD finds even more robust ...
    assert after["pgd_t_acc"] < 0.15 < after["pgd_acc"] - 0.5  # ... until PGD uses z / T

    gated, _ = _run(tmp_path, data_dir, "gated", gate=True)
    attacked = gated[ATTACK_ROUND]
    assert not attacked["aggregated"] and not attacked["gate"]["accepted"], attacked["gate"]
    assert attacked["model_sha256"] == gated[ATTACK_ROUND - 1]["model_sha256"]
    assert all(r["aggregated"] for r in gated[1:] if r["round"] != ATTACK_ROUND)
    assert gated[-1]["metrics"]["pgd_t_acc"] > 2 * after["pgd_t_acc"]
