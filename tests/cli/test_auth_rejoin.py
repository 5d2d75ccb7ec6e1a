"""How a restarted SuperNode rejoins a SuperLink with SuperNode authentication (Flower 1.36).

The key, not the process, is the node: the SuperLink maps a registered public key to one node id
and refuses to activate it while that node counts as online. A SuperNode stopped with SIGTERM
deactivates itself first, so the same key rejoins at once, as the same node. One that is killed
(SIGKILL, a crash, a lost host) stays online until the SuperLink misses two heartbeats (2 x 30 s);
until then its key is refused, and the guard says why. (By hand, on this machine: refused at
+5..55 s after the kill, accepted at +65 s.)
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from cli.credentials import ensure_credentials
from cli.processes import ProcessGroup, free_ports, wait_for_port
from cli.supernode_guard import REFUSED_EXIT
from cli.tls import Security, register_keys, supernode_command
from tests.cli.deploy_helpers import (
    BINDIR,
    flower_env,
    start_superlink,
    wait_for_text,
    write_connection,
)


@pytest.mark.slow
def test_sigterm_rejoins_at_once_and_a_killed_node_is_refused_until_it_times_out(
    tmp_path: Path,
) -> None:
    creds, _ = ensure_credentials(tmp_path / "credentials", node_names=["supernode-0"])
    sec = Security(tls=True, auth=True, credentials=creds)
    fleet, control, appio, *ports = free_ports(6)
    home = tmp_path / "home"
    write_connection(home, "rejoin", f"127.0.0.1:{control}", sec)
    env = flower_env(home)
    logs = tmp_path / "logs"

    def node(name: str, port: int):
        return group.start(name, [
            *supernode_command(sec, "supernode-0"),
            "--superlink", f"127.0.0.1:{fleet}", "--port", str(port),
        ])  # fmt: skip

    with ProcessGroup(logs, env) as group:
        link = start_superlink(group, sec, f"127.0.0.1:{fleet}", f"127.0.0.1:{control}", appio)
        wait_for_port(control, link, timeout=60)
        [registered] = register_keys(
            [str(BINDIR / "flwr")], [creds.node_public_key("supernode-0")], "rejoin", env
        )
        node_id = re.search(r"registered as node (\d+)", registered).group(1)

        first = node("first", ports[0])
        wait_for_text(logs / "first.log", f"SuperNode ID: {node_id}", 60, first)
        first.send_signal(signal.SIGTERM)  # the guard passes it on; Flower deactivates the node
        assert first.wait(timeout=60) == 0

        second = node("second", ports[1])  # same key, straight away
        wait_for_text(logs / "second.log", f"SuperNode ID: {node_id}", 60, second)
        os.killpg(second.pid, signal.SIGKILL)  # no goodbye: the node stays "online"
        second.wait(timeout=10)

        third = node("third", ports[2])
        assert third.wait(timeout=60) == REFUSED_EXIT
    log = (logs / "third.log").read_text()
    assert "[certfl] SuperNode refused:" in log
    assert "still counted online because it stopped without SIGTERM" in log
    assert "SuperNode ID:" not in log
