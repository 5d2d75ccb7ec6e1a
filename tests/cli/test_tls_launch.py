"""`certfl launch --tls --auth`: a real SuperLink with TLS and SuperNode authentication, two
SuperNodes with registered keys that complete a round, and two that must be refused (a key the
SuperLink never registered, and no key at all) without stopping the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.processes import kill_processes_with_env, processes_with_env
from server.run_store import read_rounds
from tests.conftest import REPO

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
    home = str(work / "flwr-home")
    try:
        proc = subprocess.run(
            [certfl, "launch", str(REPO), "--supernodes", "2", "--tls", "--auth",
             "--intruders", "unregistered,keyless", "--output-dir", str(out), "--run-name", "auth",
             "--data-dir", str(data_dir), "--run-config", TINY, "--timeout", "400"],
            capture_output=True, text=True, timeout=460, env={**os.environ},
        )  # fmt: skip
        time.sleep(1.0)
        leftovers = processes_with_env("FLWR_HOME", home)
    finally:
        kill_processes_with_env("FLWR_HOME", home)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert leftovers == [], f"processes left running: {leftovers}"
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
def test_a_plaintext_supernode_cannot_join_a_tls_superlink(tmp_path: Path) -> None:
    """The SuperLink of `--tls` speaks only TLS: a SuperNode dialling it with --insecure is told
    so by the guard instead of retrying forever."""
    from cli.credentials import ensure_credentials
    from cli.processes import ProcessGroup, free_ports, wait_for_port
    from cli.supernode_guard import REFUSED_EXIT
    from cli.tls import Security, superlink_flags, supernode_command

    creds, _ = ensure_credentials(tmp_path / "credentials")
    sec = Security(tls=True, auth=False, credentials=creds)
    bindir = Path(sys.executable).parent
    fleet, control, appio, node_port = free_ports(4)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
           "FLWR_HOME": str(tmp_path / "home")}  # fmt: skip
    with ProcessGroup(tmp_path / "logs", env) as group:
        link = group.start("superlink", [
            str(bindir / "flower-superlink"), *superlink_flags(sec),
            "--fleet-api-address", f"127.0.0.1:{fleet}", "--control-api-address",
            f"127.0.0.1:{control}", "--host", "127.0.0.1", "--port", str(appio),
        ])  # fmt: skip
        wait_for_port(fleet, link, timeout=60)
        node = group.start("plain", [
            *supernode_command(bindir, Security(), None), "--superlink", f"127.0.0.1:{fleet}",
            "--port", str(node_port),
        ])  # fmt: skip
        assert node.wait(timeout=60) == REFUSED_EXIT
    log = (tmp_path / "logs" / "plain.log").read_text()
    assert "runs with --insecure but the SuperLink at 127.0.0.1:" in log and "speaks TLS" in log
