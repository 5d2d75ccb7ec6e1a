"""`certfl crfl-certify`: the radius constants a run implies, and the command end to end on a
small run directory holding a briefly trained MNIST model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cli.crfl_constants import radius_constants
from cli.main import main
from core.config import ConfigError, RunConfig
from core.data import load_splits
from core.models import build_model
from core.training import SGDConfig, train
from server.run_store import RunStore

FLAT = {
    "num-rounds": 20, "train.clients-per-round": 10, "roles.malicious-fraction": 0.2,
    "roles.attack": "backdoor", "roles.attack-start-round": 10, "train.local-epochs": 2,
    "train.batch-size": 50, "train.lr": 0.05, "attack.poison-fraction": 0.3,
}  # fmt: skip
ROUNDS = [{"round": r, "client": {"num-examples": 500.0 + r}} for r in range(1, 21)]


def test_constants_are_derived_from_the_run_unless_set() -> None:
    c, notes = radius_constants(RunConfig.from_flat(FLAT), ROUNDS)
    assert (c.n_attackers, c.agg_weight, c.gamma, c.lr, c.poison_fraction) == (2, 0.1, 1.0, 0.05,
                                                                               0.3)  # fmt: skip
    assert c.local_iters == 2 * math.ceil(510 / 50)  # the counts reported in round t_adv = 10
    assert c.sigma_adv == 0.01 and c.lz == pytest.approx(math.sqrt(2 + 2 * 3 + 9))  # rho_10 = 3
    assert c.contraction == 1.0  # rho_t / sigma_t >= 300 in every later round
    assert "round(roles.malicious-fraction x 10)" in notes["n_attackers"]
    assert notes["t_adv"].startswith("10 (roles.attack-start-round)") and notes["lr"] == "train.lr"
    assert "attack window is rounds 10..20" in notes["t_adv"]  # attack-end-round 0: no end
    assert "agg.rule is 'median'" in notes["agg_weight"]  # p_i = 1/K is FedAvg's weight
    one_round = {**FLAT, "roles.attack-end-round": 10, "agg.rule": "mean"}
    notes = radius_constants(RunConfig.from_flat(one_round), ROUNDS)[1]
    assert "WARNING" not in notes["t_adv"] and "WARNING" not in notes["agg_weight"]

    small_rho = {**FLAT, "crfl.rho": 0.02, "crfl.sigma-test": 0.04}
    diluted, _ = radius_constants(RunConfig.from_flat(small_rho), ROUNDS)
    # rounds 11..19 at rho / sigma = 2, round T = 20 at rho / sigma_T = 0.5
    assert diluted.contraction == pytest.approx(math.erf(2 / 2**0.5) ** 9 * math.erf(0.5 / 2**0.5))

    fixed = {**FLAT, "crfl.n-attackers": 3, "crfl.agg-weight": 0.5, "crfl.gamma": 10.0,
             "crfl.local-iters": 7, "crfl.lr": 0.001, "crfl.poison-fraction": 0.05,
             "crfl.lz": 2.0, "crfl.t-adv": 20}  # fmt: skip
    c, notes = radius_constants(RunConfig.from_flat(fixed), [])
    assert (c.n_attackers, c.agg_weight, c.gamma, c.local_iters, c.lr, c.poison_fraction,
            c.lz) == (3, 0.5, 10.0, 7, 0.001, 0.05, 2.0)  # fmt: skip
    assert c.sigma_adv == 0.01 and notes["sigma_adv"].startswith("crfl.sigma-test")
    assert notes["t_adv"].startswith("20 (crfl.t-adv)") and notes["lz"] == "crfl.lz"
    assert notes["n_attackers"] == "crfl.n-attackers" and notes["lr"] == "crfl.lr"
    assert c.contraction == 1.0 and notes["contraction"] == "no round after t_adv"

    with pytest.raises(ConfigError, match="'crfl.t-adv' resolves to 21"):
        radius_constants(RunConfig.from_flat({**FLAT, "crfl.t-adv": 21}), ROUNDS)
    with pytest.raises(ConfigError, match="set crfl.local-iters"):  # no count known at all
        radius_constants(RunConfig.from_flat({**FLAT, "data.max-client-samples": 0}), [])
    capped = RunConfig.from_flat({**FLAT, "data.max-client-samples": 120})
    assert radius_constants(capped, [])[0].local_iters == 2 * math.ceil(120 / 50)


def _run_dir(tmp_path: Path, data_dir: Path) -> Path:
    """A run directory as the server writes it: a trained MLP as final.pt, round records."""
    cfg = RunConfig.from_flat({
        **FLAT, "num-rounds": 3, "roles.attack-start-round": 2, "train.clients-per-round": 5,
        "data.dir": str(data_dir), "data.n-cert": 100, "data.n-val": 100, "model.name": "mlp",
        "eval.n-test": 80, "crfl.n-copies": 40, "crfl.bound": "clopper-pearson",
    })  # fmt: skip
    splits = load_splits(cfg.data)
    model = build_model("mlp", splits.spec, seed=0)
    train(model, splits.pool.subset(slice(0, 2000)), SGDConfig(2, 50, 0.1, 0.9),
          torch.Generator().manual_seed(0))  # fmt: skip
    store = RunStore(tmp_path / "run", cfg)
    for r in range(4):
        store.append_round({"round": r, "client": {"num-examples": 200.0} if r else {}})
    store.save_checkpoint(model.state_dict(), 3, {})
    return store.root


def test_command_certifies_clean_and_triggered_test_points(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run_dir(tmp_path, data_dir)
    assert main(["crfl-certify", str(run_dir), "--radii", "0.01,100"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((run_dir / "crfl_certify.json").read_text())
    assert summary["constants"]["local_iters"] == 2 * math.ceil(200 / 50)
    clean = summary["clean"]
    assert summary["n_test"] == len(clean["radius"]) == 80
    for a, b, pa, pb, rad in zip(clean["count_a"], clean["count_b"], clean["p_a_lower"],
                                 clean["p_b_upper"], clean["radius"], strict=True):  # fmt: skip
        assert b <= a and a + b <= 40
        assert pa <= a / 40 and pb >= b / 40  # the bounds are on the safe side of the estimates
        assert (rad == 0) == (pa <= pb)
    correct = [p == y for p, y in zip(clean["prediction"], clean["label"], strict=True)]
    assert abs(sum(correct) / 80 - summary["base_accuracy"]) < 0.05  # sigma_T = 0.01 is small
    assert summary["base_accuracy"] > 0.7 and max(clean["radius"]) > 0
    triggered = summary["triggered"]
    assert 0 < len(triggered["label"]) < 80 and summary["target"] not in triggered["label"]
    assert summary["trigger_l2"] == pytest.approx(0.1 * math.sqrt(28 * 14), rel=1e-6)
    assert "| clean | 0.01 |" in printed and "| triggered | 100 | 0.000 | 0.000 |" in printed
