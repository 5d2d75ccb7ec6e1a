"""The resume point and the run directory a resumed run continues: bit-exact models, rounds
never counted twice, a config that may not change, and files that a kill never leaves half
written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.config import ConfigError, RunConfig
from core.models import InputSpec, build_model
from core.params import model_to_record
from server.app import digest
from server.checkpoint import (
    ResumePoint,
    check_resumable,
    load_resume_point,
    model_arrays,
)
from server.run_store import RunStore, load_checkpoint, read_rounds
from tests.conftest import REPO

SPEC = InputSpec(1, 4, 4, 3, (0.5,), (0.25,))


def _point(store: RunStore, cfg: RunConfig, round_: int, best: float) -> ResumePoint:
    arrays = model_to_record(build_model("mlp", SPEC, seed=round_))
    record = store.stamp({"round": round_, "model_sha256": digest(arrays), "metrics": {}})
    return ResumePoint(round_, model_arrays(arrays), {"reference": {"pgd_acc": 0.5}}, best,
                       {"pgd_acc": best}, record, cfg.to_flat(), [{"round": 1}])  # fmt: skip


def test_a_resume_point_gives_back_the_exact_model(tmp_path: Path) -> None:
    cfg = RunConfig.from_flat({"output-dir": str(tmp_path)})
    store = RunStore(tmp_path / "run", cfg)
    point = _point(store, cfg, 3, 0.25)
    store.save_resume_point(point)
    loaded = load_resume_point(tmp_path / "run")
    assert digest(loaded.global_model()) == point.record["model_sha256"]
    assert (loaded.round, loaded.strategy, loaded.best_score) == (3, point.strategy, 0.25)
    assert loaded.ground_truth == [{"round": 1}] and loaded.config == cfg.to_flat()


def test_resuming_drops_rounds_after_the_point_and_a_line_cut_short(tmp_path: Path) -> None:
    cfg = RunConfig.from_flat({})
    store = RunStore(tmp_path, cfg)
    for r in range(4):
        store.append_round({"round": r, "metrics": {}})
    store.close()
    with (tmp_path / "rounds.jsonl").open("a") as f:
        f.write('{"round": 4, "metr')  # killed mid-line
    (tmp_path / "done").write_text("1\n")
    point = _point(store, cfg, 2, 0.75)
    resumed = RunStore.resume(tmp_path, cfg, point)
    resumed.append_round({"round": 3, "metrics": {}})
    resumed.close()
    rounds = read_rounds(tmp_path / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[2] == point.record
    assert resumed.best_score == 0.75 and not (tmp_path / "done").exists()


def test_a_resumed_run_keeps_its_config_but_may_run_longer(tmp_path: Path) -> None:
    cfg = RunConfig.from_flat({"seed": 3, "num-rounds": 5})
    store = RunStore(tmp_path, cfg)
    point = _point(store, cfg, 4, 0.0)
    later = {"seed": 3, "num-rounds": 8, "resume-from": str(tmp_path), "train.round-timeout": 9.0}
    check_resumable(RunConfig.from_flat(later), point)
    with pytest.raises(ConfigError, match=r"'seed' = 4, the run has 3.*'train.lr' = 0.5"):
        check_resumable(RunConfig.from_flat({**later, "seed": 4, "train.lr": 0.5}), point)
    with pytest.raises(ConfigError, match="'num-rounds' = 3.*already played 4"):
        check_resumable(RunConfig.from_flat({**later, "num-rounds": 3}), point)
    with pytest.raises(ConfigError, match="no resume.pt"):
        load_resume_point(tmp_path / "elsewhere")


WRITER = """
import sys, torch
from server.run_store import _atomic_save
path = sys.argv[1]
payloads = [{"v": i, "x": torch.full((4_000_000,), float(i))} for i in range(2)]
_atomic_save(payloads[0], __import__("pathlib").Path(path))
print("ready", flush=True)
i = 1
while True:
    _atomic_save(payloads[i % 2], __import__("pathlib").Path(path))
    i += 1
"""


@pytest.mark.slow
def test_a_kill_while_a_checkpoint_is_written_leaves_the_old_or_the_new(tmp_path: Path) -> None:
    path = tmp_path / "final.pt"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        payload = load_checkpoint(path)
        assert payload["v"] in (0, 1)
        assert bool((payload["x"] == float(payload["v"])).all())
    assert torch.load(path, weights_only=True)["x"].numel() == 4_000_000
