"""A distilled model looks robust to PGD at T = 1 and PGD on z / T breaks it (CFAT Sec. 2.3)."""

from __future__ import annotations

from pathlib import Path

import torch

from attacks.distillation import distill
from core.config import DataConfig, RunConfig
from core.data import load_splits
from core.evasion import PGDConfig, pgd_evaluate
from core.models import build_model
from core.training import SGDConfig, evaluate, train


def test_dataset_default_temperatures_follow_the_paper() -> None:
    def temperature(**flat: object) -> float:
        return RunConfig.from_flat(
            {"roles.attack": "distillation", **flat}
        ).attack.distill_temperature

    assert temperature() == 100.0
    assert temperature(**{"data.dataset": "cifar10"}) == 25.0
    assert temperature(**{"attack.distill-temperature": 7}) == 7


def test_distilled_model_masks_gradients_until_pgd_uses_the_temperature(data_dir: Path) -> None:
    splits = load_splits(DataConfig(dir=str(data_dir)))
    train_set, test = splits.pool.subset(slice(0, 600)), splits.test.subset(slice(0, 300))
    g = torch.Generator().manual_seed(0)
    honest = build_model("conv-small", splits.spec, seed=0)
    train(honest, train_set, SGDConfig(epochs=2, lr=0.05, momentum=0.9), g)
    init = build_model("conv-small", splits.spec, seed=1)
    _, distilled = distill(init, train_set, 100.0, epochs=10, lr=3e-3, generator=g)

    def accuracies(model: torch.nn.Module) -> tuple[float, float, float]:
        def pgd_at(t: float) -> float:
            attack = PGDConfig(eps=0.2, steps=20, temperature=t)
            return pgd_evaluate(model, test, attack, 300, torch.Generator().manual_seed(1)).accuracy

        return evaluate(model, test).accuracy, pgd_at(1.0), pgd_at(100.0)

    clean_h, pgd_h, _ = accuracies(honest)
    clean_d, pgd_d, bypass_d = accuracies(distilled)
    assert clean_d >= clean_h - 0.05  # a working classifier ...
    assert pgd_h < 0.2 and pgd_d > 0.6  # ... that a plain PGD check finds "robust" ...
    assert bypass_d < 0.15  # ... until PGD attacks softmax(z / T)
