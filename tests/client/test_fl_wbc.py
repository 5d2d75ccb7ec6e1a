"""FL-WBC (Sec. 5.1): the perturbation lands only on flat directions, inside real local training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from client.app import local_update
from client.fl_wbc import FLWBCHook, fl_wbc_update, laplace_scale, wbc_perturbation
from client.local import benign_update
from core.config import FLWBCConfig, NodeConfig, RunConfig
from core.data import ImageSet, load_splits
from core.job import LocalJob
from core.models import build_model
from core.params import model_to_record
from core.roles import FL_WBC
from core.training import SGDConfig, train

CURVATURE = 20.0  # Hessian diagonal of the curved coordinates; the flat ones have 0
LR = 0.01


class Quadratic(nn.Module):
    """f(w) = 1/2 sum_j h_j w_j^2 with h_j = CURVATURE on even j and 0 (flat) on odd j."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((n,), 5.0))
        self.register_buffer("h", torch.tensor([CURVATURE, 0.0]).repeat(n // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.h * out**2).sum()


def _run(hook_scale: float | None, steps: int = 5) -> tuple[Quadratic, FLWBCHook | None]:
    model = Quadratic(2000)
    data = ImageSet(torch.zeros(steps, 1, 1, 1, dtype=torch.uint8), torch.zeros(steps).long())
    hook = None
    if hook_scale is not None:
        hook = FLWBCHook(model, LR, hook_scale, torch.Generator().manual_seed(0))
    train(model, data, SGDConfig(batch_size=1, lr=LR), torch.Generator().manual_seed(0),
          after_step=hook, loss_fn=model.loss)  # fmt: skip
    return model, hook


def test_toy_quadratic_perturbs_only_coordinates_with_small_hessian_diagonal() -> None:
    plain, _ = _run(None)
    defended, hook = _run(0.4)
    curved, flat = slice(0, None, 2), slice(1, None, 2)
    # The Hessian-diagonal estimate |dW_{i+1} - dW_i| / eta is CURVATURE^2 * eta * |w| >= 8 on
    # the curved coordinates and 0 on the flat ones: Laplace(0.4) noise never exceeds the former.
    assert torch.equal(defended.w[curved], plain.w[curved])
    assert bool((defended.w[flat] != plain.w[flat]).all())
    assert hook is not None and hook.perturbed[0] == 0.5  # step 2: every flat coordinate
    assert all(0 < share <= 0.5 for share in hook.perturbed)


def test_perturbation_formula_and_mask() -> None:
    step = torch.tensor([0.0, 0.02, -0.001, 0.5])
    previous = torch.tensor([0.0, 0.0, 0.0, 0.0])
    y = torch.tensor([0.3, -0.3, -0.3, 1.0])
    # |step - previous| / eta = [0, 2, 0.1, 50] against |Y| = [0.3, 0.3, 0.3, 1]
    expected = torch.tensor([0.003, 0.0, -0.003, 0.0])
    torch.testing.assert_close(wbc_perturbation(step, previous, LR, y), expected)


def _wbc_job(data_dir: Path, mode: str = "sgd", **flat: object) -> LocalJob:
    """Client 1 of 100 at round 3, an MLP on 96 MNIST points, one local epoch."""
    cfg = RunConfig.from_flat({
        "data.dir": str(data_dir), "data.n-val": 100, "data.max-client-samples": 96,
        "model.name": "mlp", "train.mode": mode, "train.adv-eps": 0.25, "train.adv-steps": 2,
        "train.lr": LR, "train.momentum": 0.0, "train.batch-size": 16, "train.local-epochs": 1,
        **flat,
    })  # fmt: skip
    net = build_model("mlp", load_splits(cfg.data).spec, seed=0)
    return LocalJob(cfg, NodeConfig(partition_id=1, num_partitions=100), model_to_record(net), 3)


def _states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_s_means_picks_the_laplace_scale_the_update_uses(data_dir: Path) -> None:
    assert laplace_scale(FLWBCConfig(s=0.4)) == 0.4
    assert laplace_scale(FLWBCConfig(s=0.4, s_means="std")) == pytest.approx(0.4 / math.sqrt(2))
    # s = 0.4 read as the scale b, and s = 0.4 sqrt 2 read as the std, are the same noise b = 0.4
    as_scale = fl_wbc_update(_wbc_job(data_dir, **{"fl-wbc.s": 0.4})).state
    as_std = fl_wbc_update(
        _wbc_job(data_dir, **{"fl-wbc.s": 0.4 * math.sqrt(2), "fl-wbc.s-means": "std"})
    ).state
    smaller = fl_wbc_update(_wbc_job(data_dir, **{"fl-wbc.s": 0.4, "fl-wbc.s-means": "std"}))
    assert _states_close(as_scale, as_std)
    assert not _states_close(as_scale, smaller.state)  # b = 0.28 differs


@pytest.mark.parametrize("mode", ["sgd", "pgd"])
def test_fl_wbc_role_trains_like_benign_plus_the_perturbation(data_dir: Path, mode: str) -> None:
    benign = benign_update(_wbc_job(data_dir, mode, **{"fl-wbc.s": 0.4}))
    silent = fl_wbc_update(_wbc_job(data_dir, mode, **{"fl-wbc.s": 0.0}))
    defended = fl_wbc_update(_wbc_job(data_dir, mode, **{"fl-wbc.s": 0.4}))
    b, s, d = benign.state, silent.state, defended.state
    assert all(torch.equal(b[k], s[k]) for k in b)  # s = 0: nothing perturbed, bit-identical
    assert silent.metrics["wbc-perturbed-share"] == 0.0
    assert any(not torch.equal(b[k], d[k]) for k in b)
    assert 0.0 < defended.metrics["wbc-perturbed-share"] < 1.0


def test_client_app_dispatches_the_fl_wbc_role(data_dir: Path) -> None:
    cfg = RunConfig.from_flat({
        "data.dir": str(data_dir), "data.n-val": 100, "data.max-client-samples": 32,
        "model.name": "mlp", "train.mode": "sgd", "train.batch-size": 16,
        "train.local-epochs": 1, "train.momentum": 0.0,
    })  # fmt: skip
    net = build_model("mlp", load_splits(cfg.data).spec, seed=0)
    job = LocalJob(cfg, NodeConfig(partition_id=4, num_partitions=100), model_to_record(net), 1)
    dispatched = local_update(FL_WBC, job, run_id=0)
    a, b = dispatched.state, fl_wbc_update(job).state
    assert all(torch.equal(a[k], b[k]) for k in a) and "wbc-perturbed-share" in dispatched.metrics
