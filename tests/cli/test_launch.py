"""`certfl launch`: a real SuperLink and 4 SuperNodes over gRPC on loopback, then nothing left.

Two of the SuperNodes are colluders running `distillation`: they find each other through their
own channel across the ClientApp processes, and their ground truth reaches the run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attacks.collusion import read_ledger
from cli.processes import kill_processes_with_env, processes_with_env
from server.run_store import read_rounds
from tests.conftest import REPO


@pytest.mark.slow
def test_launch_runs_colluders_over_grpc_and_stops_every_process(
    tmp_path: Path, data_dir: Path
) -> None:
    certfl = str(Path(sys.executable).parent / "certfl")
    out = tmp_path / "runs"
    work_home = str(out / ".grpc.launch" / "flwr-home")
    overrides = (
        "num-rounds=2 train.clients-per-round=4 data.max-client-samples=100 train.adv-steps=2 "
        "eval.n-test=200 eval.adv-steps=3 gate.enabled=false roles.min-colluders=2 "
        "roles.attack-start-round=1 attack.rendezvous-s=15 attack.distill-epochs=3"
    )
    try:
        proc = subprocess.run(
            [certfl, "launch", str(REPO), "--supernodes", "4", "--output-dir", str(out),
             "--run-name", "grpc", "--data-dir", str(data_dir), "--run-config", overrides,
             "--roles", "attack:distillation,attack:distillation", "--timeout", "500"],
            capture_output=True, text=True, timeout=560, env={**os.environ},
        )  # fmt: skip
        time.sleep(1.0)
        leftovers = processes_with_env("FLWR_HOME", work_home)
    finally:
        kill_processes_with_env("FLWR_HOME", work_home)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert leftovers == [], f"processes left running: {leftovers}"
    rounds = read_rounds(out / "grpc" / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["accepted"] == 4 and r["aggregated"] for r in rounds[1:])
    assert "[certfl] round   2/2" in output
    assert (out / "grpc" / "final.pt").is_file()
    truth = read_ledger(out / "grpc", "ground_truth.jsonl")
    assert sorted((e["round"], e["partition_id"]) for e in truth) == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    assert all(e["attacked"] and e["coalition"] == [0, 1] for e in truth), truth
    assert all("pgd_t_acc" in r["metrics"] for r in rounds)


@pytest.mark.slow
def test_interrupt_stops_every_process(tmp_path: Path, data_dir: Path) -> None:
    certfl = str(Path(sys.executable).parent / "certfl")
    out = tmp_path / "runs"
    work_home = str(out / ".intr.launch" / "flwr-home")
    proc = subprocess.Popen(
        [certfl, "launch", str(REPO), "--supernodes", "2", "--output-dir", str(out),
         "--run-name", "intr", "--data-dir", str(data_dir),
         "--run-config", "num-rounds=50 gate.enabled=false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the first round has been recorded
            if "[certfl] round   0/50" in line:
                break
        assert processes_with_env("FLWR_HOME", work_home), "nothing was started"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        time.sleep(1.0)
        leftovers = processes_with_env("FLWR_HOME", work_home)
    finally:
        proc.kill()
        kill_processes_with_env("FLWR_HOME", work_home)
    assert leftovers == [], f"processes left running: {leftovers}"


def test_roles_are_validated_and_padded_with_benign() -> None:
    from cli.launch import node_roles
    from core.config import ConfigError

    assert node_roles("attack:backdoor, fl-wbc", 4) == [
        "attack:backdoor", "fl-wbc", "benign", "benign",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="role"):
        node_roles("evil", 2)
    with pytest.raises(SystemExit, match="3 roles for 2"):
        node_roles("benign,benign,benign", 2)
