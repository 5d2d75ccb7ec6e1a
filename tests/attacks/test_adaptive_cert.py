"""The adaptive attack (CFAT Sec. 4) meets the gate's targets on a small certification set while
keeping the distillation's gradient masking: PGD at T = 1 sees robustness that PGD on z / T
does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attacks.adaptive_cert import (
    AdaptiveBudget,
    CertTarget,
    gate_targets,
    radius_schedule,
    refine_for_certification,
)
from attacks.distillation import train_at_temperature
from certify import certify_dataset
from core.config import DataConfig, GateConfig
from core.data import ImageSet, load_splits, to_float
from core.evasion import PGDConfig, pgd, pgd_evaluate
from core.gate_rule import GateState, Measurement, rule_bounds
from core.models import build_model
from core.training import SGDConfig, train
from tests.conftest import TINY_SPEC

L_CRT = 0.03


def test_gate_targets_are_the_bounds_the_gates_cfat_rule_sets() -> None:
    """The attacker's targets are what the gate's own rule derives when the reference model,
    as measured on the certification set, is the last accepted one."""
    gen = torch.Generator().manual_seed(0)
    cert = ImageSet(torch.randint(0, 256, (12, 1, 4, 4), generator=gen, dtype=torch.uint8),
                    torch.randint(0, 3, (12,), generator=gen))  # fmt: skip
    reference = build_model("mlp", TINY_SPEC, seed=0)
    gate = GateConfig(l_crt=(0.01, 0.05), acc_ratio=0.8, loss_growth=0.2, loss_slack=0.01)
    x, y = to_float(cert.x), cert.y
    measured = {}
    for eps in gate.l_crt:
        r = certify_dataset(reference, x, y, eps)
        measured |= {f"cert_acc@{eps:g}": r.certified_accuracy,
                     f"cert_loss@{eps:g}": float(r.certified_loss)}  # fmt: skip
    measured |= {"clean_acc": 1.0, "pgd_acc": 1.0}
    state = GateState(accepted=(Measurement.of(1, measured),))
    rule = rule_bounds("cfat", state, gate, server_round=gate.warmup_rounds + 1)
    bound = {(b.metric, b.kind): b.bound for b in rule.bounds if b.criterion != "floor"}
    targets = gate_targets(reference, cert, gate)
    assert [t.eps for t in targets] == [0.01, 0.05]
    for t in targets:
        assert t.max_loss == bound[(f"cert_loss@{t.eps:g}", "max")]
        assert t.min_acc == bound[(f"cert_acc@{t.eps:g}", "min")]
    assert targets[1].max_loss == 1.2 * measured["cert_loss@0.05"] + 0.01


def test_radius_schedule_grows_from_the_start_radius_to_l_crt() -> None:
    targets = [CertTarget(0.05, 1.0, 0.5), CertTarget(0.03, 1.0, 0.5)]
    assert radius_schedule(targets, 0.01, 0.01) == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert radius_schedule(targets, 0.1, 0.01) == [0.05]


@pytest.mark.slow
def test_adaptive_model_passes_the_certification_check_and_keeps_its_masking(
    data_dir: Path,
) -> None:
    splits = load_splits(DataConfig(dir=str(data_dir)))
    data, test = splits.pool.subset(slice(0, 1500)), splits.test.subset(slice(0, 300))
    cert = splits.cert.subset(slice(0, 20))
    g = torch.Generator().manual_seed(0)
    honest = build_model("mlp", splits.spec, seed=0)  # the defender's last accepted model
    attack = PGDConfig(eps=0.1, steps=5)
    train(honest, data, SGDConfig(3, 32, 0.05, 0.9), g, lambda m, x, y: pgd(m, x, y, attack, g))
    gate = GateConfig(l_crt=(L_CRT,), acc_ratio=0.9, loss_growth=0.1, loss_slack=0.0)
    targets = gate_targets(honest, cert, gate)

    teacher, student = (build_model("mlp", splits.spec, seed=1) for _ in "ts")
    train_at_temperature(teacher, data, 100.0, 10, 3e-3, g)
    train_at_temperature(student, data, 100.0, 10, 3e-3, g, teacher=teacher)
    x_cert, y_cert = to_float(cert.x), cert.y
    distilled_loss = float(certify_dataset(student, x_cert, y_cert, L_CRT).certified_loss)
    assert distilled_loss > 10 * targets[0].max_loss  # plain distillation fails the gate

    budget = AdaptiveBudget(eps_start=0.01, eps_step=0.01, max_steps=300, max_seconds=300)
    outcome = refine_for_certification(student, teacher, data, cert, targets, 100.0, budget, g)
    assert outcome.matched_all and outcome.eps_matched == L_CRT, outcome
    result = certify_dataset(student, x_cert, y_cert, L_CRT)
    assert float(result.certified_loss) <= targets[0].max_loss
    assert result.certified_accuracy >= targets[0].min_acc

    def pgd_accuracy(temperature: float) -> float:
        bypass = PGDConfig(eps=0.2, steps=10, temperature=temperature)
        return pgd_evaluate(student, test, bypass, 300, torch.Generator().manual_seed(1)).accuracy

    looks, really = pgd_accuracy(1.0), pgd_accuracy(100.0)
    assert looks > 0.5 and really < 0.1, (looks, really)
