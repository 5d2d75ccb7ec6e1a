"""Byzantine baselines: each reply has its defined relation to the benign updates, and each
harms a plain mean of ten clients (three attackers) more than a coordinate-wise median."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from attack_jobs import (
    config,
    eval_set,
    initial_arrays,
    loss,
    make_job,
    mean_model,
    median_model,
    run_colluders,
    update,
)

from attacks.byzantine import alie, alie_z
from attacks.collusion import Coalition
from attacks.registry import load_policies, policy
from attacks.updates import global_vector, model_update
from client.local import benign_update
from core.adversarial_training import benign_train
from core.config import RunConfig
from core.job import LocalJob
from strategies.aggregators import coordinate_median

COLLUDERS = [0, 1, 2]
HONEST = list(range(3, 10))  # clients-per-round = 10


def _cfg(**flat: object) -> RunConfig:
    return config(train__mode="sgd", train__clients_per_round=10, **flat)


@functools.cache
def _arrays():  # noqa: ANN202 - an ArrayRecord, cached: a partially trained global model
    return initial_arrays(_cfg(), sgd_epochs=1)


def _job(pid: int, **flat: object) -> LocalJob:
    return make_job(_cfg(**flat), pid, _arrays())


@functools.cache
def _honest() -> tuple[torch.Tensor, ...]:
    """The seven honest clients' updates (plain SGD from the global model)."""
    return tuple(update(_job(p), benign_update(_job(p))) for p in HONEST)


def _own_update(pid: int) -> torch.Tensor:
    """What colluder `pid` would send as a benign client."""
    job = _job(pid)
    model = job.global_model()
    benign_train(job, model)
    return model_update(job, model)


def _attack(root: Path, name: str, **flat: object) -> list[torch.Tensor]:
    """The three colluders' updates under policy `name` (alone or as one coalition)."""
    flat = {"roles__attack": name, **flat}

    def run(me: int, c: Coalition) -> torch.Tensor:
        return update(_job(me, **flat), policy(name).run(_job(me, **flat), c))

    if policy(name).coalition:
        return list(run_colluders(root, COLLUDERS, run).values())
    return [run(me, Coalition.alone(1, me)) for me in COLLUDERS]


def _losses(attacked: list[torch.Tensor]) -> dict[str, float]:
    """Test loss of the global model and of the mean / median aggregates with and without attack."""
    job, data, honest = _job(0), eval_set(_cfg()), list(_honest())
    clean = [*honest, *(_own_update(p) for p in COLLUDERS)]
    return {
        "global": loss(job, global_vector(job), data),
        "mean": loss(job, mean_model(job, clean), data),
        "median": loss(job, median_model(job, clean), data),
        "mean-attacked": loss(job, mean_model(job, [*honest, *attacked]), data),
        "median-attacked": loss(job, median_model(job, [*honest, *attacked]), data),
    }


def test_policies_are_registered() -> None:
    names = {"replace", "aru", "aru-extract", "sign-flip", "gaussian", "alie", "ipm"}
    assert names <= set(load_policies())
    partners = {"replace", "aru", "aru-extract", "alie", "ipm"}
    assert {n for n in names if policy(n).coalition} == partners


def test_alie_z_follows_baruch_et_al() -> None:
    # s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n)
    assert alie_z(10, 3) == pytest.approx(0.5244, abs=1e-4)  # Phi^-1(0.7)
    assert alie_z(50, 24) == pytest.approx(1.7507, abs=1e-4)  # Phi^-1(0.96)
    assert alie_z(10, 1) == pytest.approx(0.0, abs=1e-12)  # (n - s) / n = 1/2
    with pytest.raises(ValueError, match="n >= 2"):
        alie_z(1, 1)
    rows = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    assert torch.allclose(alie(rows, 1.0), torch.tensor([1.0 - 2**0.5, 2.0]))


def test_sign_flip_is_anti_parallel_and_beaten_by_the_median(
    data_dir: Path, tmp_path: Path
) -> None:
    attacked = _attack(tmp_path, "sign-flip", attack__flip_scale=4.0)
    for me, u in zip(COLLUDERS, attacked, strict=True):
        torch.testing.assert_close(u, -4.0 * _own_update(me), rtol=1e-5, atol=1e-6)
        assert F.cosine_similarity(u, _own_update(me), dim=0) < -0.9999
    losses = _losses(attacked)
    assert losses["mean"] < losses["global"] < losses["mean-attacked"], losses  # uphill
    assert losses["median-attacked"] < losses["global"], losses  # the median descends


def test_gaussian_has_the_set_spread_and_is_beaten_by_the_median(
    data_dir: Path, tmp_path: Path
) -> None:
    attacked = _attack(tmp_path, "gaussian", attack__noise_std=0.5)
    for u in attacked:
        assert abs(float(u.mean())) < 0.01 and float(u.std()) == pytest.approx(0.5, rel=0.02)
    assert not torch.equal(attacked[0], attacked[1])  # each draws its own noise
    losses = _losses(attacked)
    assert losses["mean"] < losses["global"] < losses["mean-attacked"], losses  # worse
    assert losses["median-attacked"] < losses["global"], losses


def test_alie_stays_within_the_spread_and_shifts_the_median(data_dir: Path, tmp_path: Path) -> None:
    attacked = _attack(tmp_path, "alie")
    assert all(torch.equal(u, attacked[0]) for u in attacked)  # one vector for the coalition
    own = torch.stack([_own_update(p) for p in COLLUDERS])
    mean, std = own.mean(0), own.std(0)
    z = alie_z(10, 3)
    torch.testing.assert_close(attacked[0], mean - z * std, rtol=1e-4, atol=1e-7)
    spread = float((own - mean).norm(dim=1).pow(2).mean().sqrt())  # RMS distance to the mean
    assert float((attacked[0] - mean).norm()) < spread  # no further out than a benign update
    honest = torch.stack(_honest())
    ones = torch.ones(10)
    shifted = coordinate_median(torch.cat([honest, torch.stack(attacked)]), ones)
    unshifted = coordinate_median(torch.cat([honest, own]), ones)
    assert float(((shifted - unshifted) * std).sum()) < 0  # the median moves along -std


def test_ipm_opposes_the_benign_mean_and_reverses_the_mean(data_dir: Path, tmp_path: Path) -> None:
    honest_mean = torch.stack(_honest()).mean(0)
    small = _attack(tmp_path / "small", "ipm")  # epsilon = 0.1, the default
    own_mean = torch.stack([_own_update(p) for p in COLLUDERS]).mean(0)
    torch.testing.assert_close(small[0], -0.1 * own_mean, rtol=1e-4, atol=1e-8)
    assert float(small[0] @ honest_mean) < 0  # negative inner product with the true benign mean
    large = _attack(tmp_path / "large", "ipm", attack__ipm_epsilon=3.0)  # > (n - f) / f = 7/3
    job = _job(0)
    aggregate = mean_model(job, [*_honest(), *large]) - global_vector(job)
    assert float(aggregate @ honest_mean) < 0  # the mean now points against the benign one
    losses = _losses(large)
    assert losses["mean-attacked"] > losses["global"], losses
