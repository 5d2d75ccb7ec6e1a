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
from attacks.evasion import PGDConfig, pgd, pgd_evaluate
from certify import certify_dataset
from core.config import DataConfig
from core.data import load_splits, to_float
from core.models import build_model
from core.training import SGDConfig, train

L_CRT = 0.03


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
    targets = gate_targets(honest, cert, (L_CRT,), acc_ratio=0.9, loss_growth=0.1, loss_slack=0)

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
