"""`aru` and `aru-extract`: replacing the robust global model unhardens it (ARU Sec. 4).

The global model is adversarially trained (PGD at EPS); two colluders of five clients replace it
while the three benign clients are near convergence. The FedAvg aggregate must keep a
reasonable clean accuracy (80% of the global model's) and lose at least half of its PGD
accuracy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from attack_jobs import (
    accuracies,
    config,
    eval_set,
    make_job,
    mean_model,
    robust_arrays,
    run_colluders,
    update,
)
from flwr.app import ArrayRecord

from attacks.aru import load_nonrobust
from attacks.aru_extract import wrong_labels
from attacks.collusion import Coalition
from attacks.registry import policy
from attacks.updates import global_vector
from client.local import benign_update
from core.adversarial_training import benign_train
from core.config import ConfigError, RunConfig

COLLUDERS = [0, 1]
BENIGN = [2, 3, 4]  # clients-per-round = 5


def _updates(
    root: Path,
    cfg: RunConfig,
    name: str,
    server_round: int,
    arrays: ArrayRecord,
    members: list[int] = COLLUDERS,
) -> dict[int, torch.Tensor]:
    """The updates of the colluders `members` under policy `name` in `server_round`."""

    def collude(me: int, c: Coalition) -> torch.Tensor:
        job = make_job(cfg, me, arrays, server_round)
        return update(job, policy(name).run(job, c))

    return run_colluders(root, members, collude, server_round)


def _near_converged(arrays: ArrayRecord) -> list[torch.Tensor]:
    """The benign clients' updates: Madry training with a tiny step, updates close to zero."""
    calm = config(train__lr=5e-5)
    return [update(make_job(calm, p, arrays), benign_update(make_job(calm, p, arrays)))
            for p in BENIGN]  # fmt: skip


def _assert_unhardened(cfg: RunConfig, arrays: ArrayRecord, updates: list[torch.Tensor]) -> None:
    job = make_job(cfg, 0, arrays)
    data = eval_set(cfg)
    clean_g, pgd_g = accuracies(job, global_vector(job), data)
    clean, pgd = accuracies(job, mean_model(job, updates), data)
    seen = f"global clean {clean_g:.3f} pgd {pgd_g:.3f} | aggregate clean {clean:.3f} pgd {pgd:.3f}"
    assert pgd_g > 0.35, seen  # the global model is robust ...
    assert pgd < 0.5 * pgd_g, seen  # ... the replaced aggregate much less so
    assert clean > 0.8 * clean_g, seen  # ... and keeps most of its clean accuracy


def test_wrong_labels_are_the_wrong_prediction_or_the_runner_up() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 2.0, 4.0]])
    y = torch.tensor([0, 0, 2])  # right (runner-up 2), wrong (predicted 1), right (runner-up 1)
    assert wrong_labels(logits, y).tolist() == [2, 1, 1]


@pytest.mark.slow
def test_aru_replaces_with_a_non_robust_model_every_round(data_dir: Path, tmp_path: Path) -> None:
    cfg = config()
    arrays = robust_arrays()
    attacked = _updates(tmp_path, cfg, "aru", 1, arrays)
    assert torch.equal(attacked[0], attacked[1])
    _assert_unhardened(cfg, arrays, [*attacked.values(), *_near_converged(arrays)])
    # a later round reuses the stashed model: same R, here sent by one colluder (gamma / N = 5)
    alone = _updates(tmp_path, cfg, "aru", 2, arrays, members=[1])
    torch.testing.assert_close(alone[1] / 5, attacked[0] / 2.5, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_aru_extract_blends_in_for_e_rounds_then_replaces(data_dir: Path, tmp_path: Path) -> None:
    cfg = config(roles__attack="aru-extract", attack__extract_rounds=3, attack__extract_epochs=3)
    arrays = robust_arrays()
    for server_round in (1, 2):  # rounds 1 and 2 of E = 3: each reply is exactly a benign one
        for me, u in _updates(tmp_path, cfg, "aru-extract", server_round, arrays).items():
            job = make_job(cfg, me, arrays, server_round)
            model = job.global_model()
            benign_train(job, model)
            assert torch.equal(u, update(job, job.reply(model)))
    third = _updates(tmp_path, cfg, "aru-extract", 3, arrays)
    assert torch.equal(third[0], third[1])
    stashed = run_colluders(tmp_path, [7], lambda me, c: c.recall("aru-extract"), 4)[7]
    assert stashed["rounds"] == 3
    _assert_unhardened(cfg, arrays, [*third.values(), *_near_converged(arrays)])


def test_nonrobust_checkpoint_is_loaded_or_refused_naming_the_key(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = config()
    job = make_job(cfg, 0, robust_arrays())
    state = job.global_model().state_dict()
    good, wrong = tmp_path / "final.pt", tmp_path / "other.pt"
    torch.save({"model": "mlp", "state_dict": state, "round": 3}, good)  # run store format
    torch.save({"model": "conv-small", "state_dict": state}, wrong)
    loaded = load_nonrobust(job, str(good)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(ConfigError, match=r"'attack\.nonrobust-path'.*'conv-small'"):
        load_nonrobust(job, str(wrong))
    with pytest.raises(ConfigError, match=r"'attack\.nonrobust-path'.*no such file"):
        load_nonrobust(job, str(tmp_path / "missing.pt"))
