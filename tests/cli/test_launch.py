"""`certfl launch`: a real SuperLink and SuperNodes over gRPC on loopback, then nothing left.

Every test watches the process tree under the launcher (tests/process_tree.py) and checks that
no process seen in it still runs afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from attacks.collusion import read_ledger
from cli.processes import free_ports, stop_processes, tree
from server.run_store import read_rounds
from tests.conftest import REPO
from tests.process_tree import watched

CERTFL = str(Path(sys.executable).parent / "certfl")
TINY = (
    "train.local-epochs=1 train.adv-steps=1 data.max-client-samples=64 data.n-val=100 "
    "eval.n-test=100 eval.adv-steps=1 eval.temperature=0 gate.enabled=false"
)


def _launch(out: Path, name: str, data_dir: Path, *args: str) -> list[str]:
    return [CERTFL, "launch", str(REPO), "--output-dir", str(out), "--run-name", name,
            "--data-dir", str(data_dir), *args]  # fmt: skip


def _run_to_end(argv: list[str], timeout: float = 400) -> tuple[int, str]:
    """Run `argv` to its end under a process-tree watch: (exit code, output)."""
    with watched(argv) as (proc, _):
        output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


@pytest.mark.slow
def test_launch_runs_colluders_over_grpc_and_stops_every_process(
    tmp_path: Path, data_dir: Path
) -> None:
    out = tmp_path / "runs"
    overrides = (
        "num-rounds=2 train.clients-per-round=4 data.max-client-samples=100 train.adv-steps=2 "
        "eval.n-test=200 eval.adv-steps=3 gate.enabled=false roles.min-colluders=2 "
        "roles.attack-start-round=1 attack.rendezvous-s=15 attack.distill-epochs=3"
    )
    argv = _launch(
        out,
        "grpc",
        data_dir,
        "--supernodes",
        "4",
        "--run-config",
        overrides,
        "--roles",
        "attack:distillation,attack:distillation",
        "--timeout",
        "500",
    )
    code, output = _run_to_end(argv, timeout=560)
    assert code == 0, output[-4000:]
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


def _cmdline(proc: psutil.Process) -> str:
    """`proc`'s command line, "" for a process gone or a zombie."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _node_tree(launcher: int, partition: int) -> list[psutil.Process]:
    """The process tree of the SuperNode with `partition` among the launcher's children."""
    for node in psutil.Process(launcher).children():
        if f"partition-id={partition} " in _cmdline(node):
            return [node, *node.children(recursive=True)]
    raise AssertionError(f"no SuperNode with partition-id={partition}")


def _node_id(log: Path) -> int:
    return int(re.findall(r"SuperNode ID: (\d+)", log.read_text())[0])


def _start_supernode(fleet: int, partition: int, n: int, heartbeat: float, work: Path):
    """A SuperNode of this test's own (as `certfl launch` starts them), output in
    `work/<partition>.log`."""
    (port,) = free_ports(1)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1",
           "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    argv = [sys.executable, "-m", "cli.supernode", "--heartbeat-interval", f"{heartbeat:g}",
            "--insecure", "--superlink", f"127.0.0.1:{fleet}", "--host", "127.0.0.1",
            "--port", str(port), "--node-config",
            f"partition-id={partition} num-partitions={n} role='benign'"]  # fmt: skip
    log = (work / f"{partition}.log").open("w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip


@pytest.mark.slow
def test_a_lost_supernode_costs_one_round_and_a_restarted_one_is_sampled_again(
    tmp_path: Path, data_dir: Path
) -> None:
    heartbeat = 10.0  # the SuperLink loses a silent node after 2 x this
    out = tmp_path / "runs"
    overrides = [  # several strings sharing tables: every key must reach the run
        "num-rounds=6 train.clients-per-round=4",
        f"{TINY} train.round-timeout=300",
        "train.min-nodes=2 data.n-cert=50",
    ]
    argv = _launch(out, "lost", data_dir, "--supernodes", "4", "--timeout", "500",
                   "--heartbeat-interval", f"{heartbeat:g}")  # fmt: skip
    for o in overrides:
        argv += ["--run-config", o]
    output, killed_at, round2_at, rejoined = [], None, None, None
    with watched(argv) as (proc, watch):
        try:
            for line in proc.stdout:
                output.append(line)
                if m := re.search(r"SuperLink on 127\.0\.0\.1:(\d+)", line):
                    fleet = int(m.group(1))
                if "[certfl] round   1/6" in line:
                    for p in _node_tree(proc.pid, 3):
                        p.kill()
                    killed_at = time.monotonic()
                if "[certfl] round   2/6" in line:
                    round2_at = time.monotonic()
                    rejoined = _start_supernode(fleet, 3, 4, heartbeat, tmp_path)
                    watch.add(rejoined.pid)
            proc.wait(timeout=60)
        finally:
            if rejoined is not None:  # the SuperLink is gone: it would retry forever
                stop_processes(tree(rejoined.pid), grace_s=10)
                rejoined.wait(timeout=30)
    text = "".join(output)
    assert proc.returncode == 0, text[-4000:]
    run_dir = out / "lost"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["num-rounds"], config["train.clients-per-round"], config["train.local-epochs"],
            config["train.round-timeout"], config["train.min-nodes"], config["data.n-cert"],
            config["gate.enabled"]) == (6, 4, 1, 300.0, 2, 50, False)  # fmt: skip
    rounds = read_rounds(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == list(range(7))
    assert all(r["aggregated"] for r in rounds), [r["skip_reason"] for r in rounds]
    lost = _node_id(out / ".lost.launch" / "logs" / "supernode-3.log")
    assert rounds[1]["accepted"] == 4 and lost in rounds[1]["nodes"]
    r2 = rounds[2]
    assert r2["accepted"] == 3 and [f["node_id"] for f in r2["failures"]] == [lost], r2
    assert r2["failures"][0]["reason"].startswith("node lost (its heartbeat expired)")
    death_to_round = round2_at - killed_at
    own_time = rounds[1]["timings"]["round_s"]  # a round with every node
    print(f"\nSuperNode killed -> round 2 recorded: {death_to_round:.1f}s "
          f"(heartbeat window {2 * heartbeat:g}s, round 1 took {own_time:.1f}s)")  # fmt: skip
    assert death_to_round <= 2 * heartbeat + own_time + 5.0
    assert all(lost not in r["nodes"] for r in rounds[3:])
    new_id = _node_id(tmp_path / "3.log")
    back = [r for r in rounds[3:] if new_id in r["nodes"]]
    assert back and all(r["accepted"] == r["sampled"] == 4 for r in back), rounds[3:]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "timeout", "failure"])
def test_interrupts_timeouts_and_failures_stop_every_process(
    tmp_path: Path, data_dir: Path, how: str
) -> None:
    out = tmp_path / "runs"
    config = f"num-rounds=50 train.clients-per-round=1 {TINY}"
    if how == "failure":  # passes the checks, then the ServerApp finds no data there
        config += f" data.dir='{tmp_path / 'no-data'}'"
    argv = _launch(out, "stop", data_dir, "--supernodes", "1", "--run-config", config)
    if how == "timeout":
        argv += ["--timeout", "40"]
    with watched(argv) as (proc, _):
        if how.startswith("SIG"):
            for line in proc.stdout:  # wait until the first round has been recorded
                if "[certfl] round   0/50" in line:
                    break
            proc.send_signal(getattr(signal, how))
        output, _ = proc.communicate(timeout=120)
    assert not (out / "stop" / "done").exists()
    if how.startswith("SIG"):
        assert proc.returncode == 130 and "continue with: certfl launch --resume" in output
    else:
        assert proc.returncode == 1, output[-3000:]
        expected = "timed out after 40s" if how == "timeout" else "DataNotFoundError: mnist"
        assert expected in output and "INCOMPLETE" in output


def _final_digest(run_dir: Path) -> str:
    rounds = read_rounds(run_dir / "rounds.jsonl")
    return rounds[-1]["model_sha256"]


@pytest.mark.slow
def test_a_server_killed_mid_round_resumes_to_the_same_final_model(
    tmp_path: Path, data_dir: Path
) -> None:
    out = tmp_path / "runs"
    config = f"num-rounds=3 train.clients-per-round=2 seed=7 {TINY}"
    code, output = _run_to_end(_launch(out, "straight", data_dir, "-n", "2", "-c", config))
    assert code == 0, output[-3000:]

    with watched(_launch(out, "crashed", data_dir, "-n", "2", "-c", config)) as (crashed, _):
        for line in crashed.stdout:  # round 2 starts as soon as round 1 is recorded
            if "[certfl] round   1/3" in line:
                break
        time.sleep(2.0)
        servers = [p for p in psutil.Process(crashed.pid).children(recursive=True)
                   if "flwr-serverapp" in _cmdline(p)]  # fmt: skip
        assert servers, "no ServerApp process found"
        for p in servers:
            p.kill()
        crashed.send_signal(signal.SIGTERM)  # the rest of the deployment goes down too
        output, _ = crashed.communicate(timeout=120)
    run_dir = out / "crashed"
    assert crashed.returncode == 130 and not (run_dir / "done").exists(), output[-3000:]
    assert [r["round"] for r in read_rounds(run_dir / "rounds.jsonl")] == [0, 1]

    code, output = _run_to_end(_launch(out, "ignored", data_dir, "--resume", str(run_dir)))
    assert code == 0, output[-3000:]
    assert "[certfl] resuming after round 1" in output
    rounds = read_rounds(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert json.loads((run_dir / "config.json").read_text())["resume-from"] == str(run_dir)
    a, b = _final_digest(out / "straight"), _final_digest(run_dir)
    print(f"\nfinal model sha256: uninterrupted {a}, killed and resumed {b}")
    assert a == b
