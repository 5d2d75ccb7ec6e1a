"""`certfl launch --tls --auth`: a real SuperLink with TLS and SuperNode authentication, two
SuperNodes with registered keys that complete a round, and two that must be refused (a key the
SuperLink never registered, and no key at all) without stopping the run; an interrupted secure
launch resumes as the same secure deployment."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from cli.credentials import ensure_credentials
from cli.processes import ProcessGroup, free_ports, wait_for_port
from cli.supernode_guard import REFUSED_EXIT
from cli.tls import Security, supernode_command
from server.run_store import read_rounds
from tests.cli.deploy_helpers import flower_env, start_superlink
from tests.conftest import REPO
from tests.process_tree import watched

TINY = (
    "num-rounds=1 train.clients-per-round=2 data.max-client-samples=100 train.adv-steps=2 "
    "train.local-epochs=1 eval.n-test=200 eval.adv-steps=3 gate.enabled=false "
    "roles.malicious-fraction=0"
)


@pytest.mark.slow
def test_tls_auth_round_completes_and_unregistered_or_keyless_nodes_are_refused(
    tmp_path: Path, data_dir: Path
) -> None:
    certfl = str(Path(sys.executable).parent / "certfl")
    out = tmp_path / "runs"
    work = out / ".auth.launch"
    argv = [certfl, "launch", str(REPO), "--supernodes", "2", "--tls", "--auth",
            "--intruders", "unregistered,keyless", "--output-dir", str(out), "--run-name", "auth",
            "--data-dir", str(data_dir), "--run-config", TINY, "--timeout", "400"]  # fmt: skip
    with watched(argv) as (proc, _):  # and afterwards no process of its tree runs
        output, _ = proc.communicate(timeout=460)
    assert proc.returncode == 0, output[-4000:]
    rounds = read_rounds(out / "auth" / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["accepted"] == 2 and rounds[1]["aggregated"]
    # the registered SuperNodes joined over TLS with their own keys
    assert "supernode-0.pub: registered as node" in output
    assert "supernode-1.pub: registered as node" in output
    link_log = (work / "logs" / "superlink.log").read_text()
    assert "Option `--insecure` was set" not in link_log  # Flower's plaintext warning
    for name in ("supernode-0", "supernode-1"):
        node_log = (work / "logs" / f"{name}.log").read_text()
        assert "SuperNode ID:" in node_log and "Option `--insecure` was set" not in node_log
    # the intruders were refused, and the launcher said so in words
    assert "[launch] intruder-0 was refused: the SuperLink at 127.0.0.1:" in output
    assert "does not accept the key" in output and "was never registered" in output
    assert "[launch] intruder-1 was refused:" in output
    assert "requires SuperNode authentication and this SuperNode has no key" in output
    assert "No SuperNode found with the given public key" in link_log
    assert "All SuperNodes must be registered via the CLI" in link_log or "2001" in link_log


@pytest.mark.slow
def test_an_interrupted_auth_launch_resumes_with_tls_auth_and_the_same_keys(
    tmp_path: Path, data_dir: Path
) -> None:
    certfl = str(Path(sys.executable).parent / "certfl")
    out = tmp_path / "runs"
    first = [certfl, "launch", str(REPO), "-n", "2", "--auth", "--output-dir", str(out),
             "--run-name", "secure", "--data-dir", str(data_dir), "-c", TINY,
             "-c", "num-rounds=2", "--timeout", "400"]  # fmt: skip
    with watched(first) as (proc, _):
        for line in proc.stdout:  # stop once round 1 is recorded
            if "[certfl] round   1/2" in line:
                break
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    run_dir = out / "secure"
    assert proc.returncode == 130, output[-3000:]
    manifest = json.loads((out / ".secure.launch" / "launch.json").read_text())
    assert (manifest["tls"], manifest["auth"]) == (True, True)
    assert manifest["credentials"] == str(out / ".secure.launch" / "credentials")

    resume = [certfl, "launch", "--resume", str(run_dir), "--data-dir", str(data_dir)]
    with watched(resume) as (proc, _):
        output, _ = proc.communicate(timeout=460)
    assert proc.returncode == 0, output[-4000:]
    assert "(gRPC with TLS and SuperNode auth)" in output
    # the SuperLink's database kept the keys; the nodes signed off with SIGTERM, so they rejoin
    assert "supernode-0.pub: already registered" in output and "was refused" not in output
    assert [r["round"] for r in read_rounds(run_dir / "rounds.jsonl")] == [0, 1, 2]


@pytest.mark.slow
def test_a_plaintext_supernode_cannot_join_a_tls_superlink(tmp_path: Path) -> None:
    """The SuperLink of `--tls` speaks only TLS: a SuperNode dialling it with --insecure is told
    so by the guard instead of retrying forever."""
    creds, _ = ensure_credentials(tmp_path / "credentials")
    sec = Security(tls=True, auth=False, credentials=creds)
    fleet, control, appio, node_port = free_ports(4)
    with ProcessGroup(tmp_path / "logs", flower_env(tmp_path / "home")) as group:
        link = start_superlink(group, sec, f"127.0.0.1:{fleet}", f"127.0.0.1:{control}", appio)
        wait_for_port(fleet, link, timeout=60)
        node = group.start("plain", [
            *supernode_command(Security(), None), "--superlink", f"127.0.0.1:{fleet}",
            "--port", str(node_port),
        ])  # fmt: skip
        assert node.wait(timeout=60) == REFUSED_EXIT
    log = (tmp_path / "logs" / "plain.log").read_text()
    assert "runs with --insecure but the SuperLink at 127.0.0.1:" in log and "speaks TLS" in log
