"""`replace`: boosted model replacement makes the FedAvg aggregate equal the colluders' R."""

from __future__ import annotations

from pathlib import Path

import torch
from attack_jobs import config, initial_arrays, make_job, mean_model, run_colluders, update

from attacks.collusion import Coalition
from attacks.registry import policy
from attacks.replace import plain_sgd_target
from attacks.updates import global_vector
from client.local import benign_update
from core.job import LocalJob

COLLUDERS = [0, 1]
BENIGN = [2, 3, 4]  # clients-per-round = 5


def _round(root: Path, **flat: object) -> tuple[LocalJob, torch.Tensor, list[torch.Tensor]]:
    """One round of 5 clients: the colluders replace, the benign clients are near convergence
    (a learning rate 1000x smaller: updates close to zero). Returns the leader's job, R and the
    five updates, colluders first."""
    cfg = config(train__mode="sgd", roles__attack="replace", **flat)
    arrays = initial_arrays(cfg, sgd_epochs=1)
    replace = policy("replace")
    assert replace.coalition  # needs its partners: always goes through the rendezvous

    def collude(me: int, c: Coalition) -> torch.Tensor:
        result = replace.run(make_job(cfg, me, arrays), c)
        return update(make_job(cfg, me, arrays), result)

    attacked = run_colluders(root, COLLUDERS, collude)
    calm = config(train__mode="sgd", train__lr=5e-5, roles__attack="replace", **flat)
    benign = [update(make_job(calm, p, arrays), benign_update(make_job(calm, p, arrays)))
              for p in BENIGN]  # fmt: skip
    leader = make_job(cfg, COLLUDERS[0], arrays)
    r = plain_sgd_target(leader)  # recomputed independently: seeded, so the leader's R
    return leader, r, [*attacked.values(), *benign]


def test_replacement_makes_the_mean_equal_the_target(data_dir: Path, tmp_path: Path) -> None:
    leader, r, updates = _round(tmp_path)
    g = global_vector(leader)
    assert torch.equal(updates[0], updates[1])  # every colluder sends the same reply
    # gamma / N = clients-per-round / colluders = 5 / 2 (ARU Eq. 5)
    torch.testing.assert_close(updates[0], 2.5 * (r - g), rtol=1e-4, atol=1e-6)
    gap = float((mean_model(leader, updates) - r).norm()) / float((r - g).norm())
    assert gap < 0.02, gap


def test_without_boosting_the_mean_stays_far_from_the_target(
    data_dir: Path, tmp_path: Path
) -> None:
    leader, r, updates = _round(tmp_path, attack__boost=2.0)  # gamma / N = 1: R sent as is
    g = global_vector(leader)
    gap = float((mean_model(leader, updates) - r).norm()) / float((r - g).norm())
    assert gap > 0.5, gap  # the mean moves only 2/5 of the way to R
