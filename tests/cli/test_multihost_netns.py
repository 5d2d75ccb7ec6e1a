"""The README's "Deploying on several machines" recipe, with two network namespaces as the hosts.

Host "link" (10.231.0.1, also 10.231.0.3) runs the SuperLink with TLS and SuperNode
authentication; host "nodes" (10.231.0.2), joined to it by a veth pair, runs two SuperNodes that
dial 10.231.0.1, an address the SuperLink's certificate names, and the admin's `flwr` CLI, which
registers their keys and submits the run over the Control API through a `[superlink.<name>]`
connection with `root-certificates`. A third SuperNode dials 10.231.0.3, an address of the same
host that the certificate does not name, and is told so. Needs root and `ip netns`; else skipped
with the reason. The namespaces and their links are removed whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.credentials import DEFAULT_SANS, ensure_credentials, node_names
from cli.processes import ProcessGroup
from cli.supernode_guard import REFUSED_EXIT
from cli.tls import Security, register_keys, supernode_command
from server.run_store import read_rounds
from tests.cli.deploy_helpers import (
    BINDIR,
    flower_env,
    start_superlink,
    wait_for_text,
    write_connection,
)
from tests.conftest import REPO

LINK_IP, NODES_IP, UNNAMED_IP = "10.231.0.1", "10.231.0.2", "10.231.0.3"
TINY = (
    "num-rounds=1 train.clients-per-round=2 train.min-nodes=2 data.max-client-samples=100 "
    "train.adv-steps=2 train.local-epochs=1 eval.n-test=200 eval.adv-steps=3 "
    "gate.enabled=false roles.malicious-fraction=0"
)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _why_no_netns() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"cfl-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as err:
        return f"`ip netns add` fails here: {err}"
    _ip("netns", "del", probe)
    return None


@dataclass(frozen=True)
class Hosts:
    """Two network namespaces joined by a veth pair."""

    link: str
    nodes: str

    def run_in(self, host: str) -> list[str]:
        """The command prefix that runs a program on `host`."""
        return ["ip", "netns", "exec", host]


@pytest.fixture
def two_hosts() -> Iterator[Hosts]:
    reason = _why_no_netns()
    if reason is not None:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    hosts = Hosts(f"cfl-link-{tag}", f"cfl-nodes-{tag}")
    link_if, nodes_if = f"cfl-l{tag}", f"cfl-n{tag}"  # interface names: 15 characters at most
    try:
        _ip("netns", "add", hosts.link)
        _ip("netns", "add", hosts.nodes)
        _ip("link", "add", link_if, "type", "veth", "peer", "name", nodes_if)
        _ip("link", "set", link_if, "netns", hosts.link)
        _ip("link", "set", nodes_if, "netns", hosts.nodes)
        for ns, dev, addrs in (
            (hosts.link, link_if, (LINK_IP, UNNAMED_IP)),
            (hosts.nodes, nodes_if, (NODES_IP,)),
        ):
            for addr in addrs:
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for ns in (hosts.link, hosts.nodes):  # deleting a namespace deletes its veth end too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", link_if], capture_output=True, timeout=30)


@pytest.mark.slow
def test_supernodes_on_another_host_complete_a_round_over_tls_with_auth(
    tmp_path: Path, data_dir: Path, two_hosts: Hosts
) -> None:
    names = node_names(2)
    creds, _ = ensure_credentials(
        tmp_path / "credentials", [*DEFAULT_SANS, LINK_IP], [*names, "stray"]
    )
    sec = Security(tls=True, auth=True, credentials=creds)
    home = tmp_path / "admin-home"
    write_connection(home, "remote", f"{LINK_IP}:9093", sec)
    env = {**flower_env(home), "CERTFL_DATA": str(data_dir)}
    logs = tmp_path / "logs"
    on_link, on_nodes = two_hosts.run_in(two_hosts.link), two_hosts.run_in(two_hosts.nodes)
    with ProcessGroup(logs, env) as group:
        # listening on every address of its host, as in the README
        link = start_superlink(group, sec, "0.0.0.0:9092", "0.0.0.0:9093", 9091, prefix=on_link)
        wait_for_text(logs / "superlink.log", "Starting Fleet API", 60, link)
        keys = [creds.node_public_key(n) for n in [*names, "stray"]]
        registered = register_keys([*on_nodes, str(BINDIR / "flwr")], keys, "remote", env)
        assert all("registered as node" in line for line in registered), registered
        for i, name in enumerate(names):
            group.start(name, [
                *on_nodes, *supernode_command(sec, name),
                "--superlink", f"{LINK_IP}:9092", "--port", str(9094 + i),
                "--node-config", f"partition-id={i} num-partitions=2 role='benign'",
            ])  # fmt: skip
        stray = group.start("stray", [
            *on_nodes, *supernode_command(sec, "stray"),
            "--superlink", f"{UNNAMED_IP}:9092", "--port", "9099",
        ])  # fmt: skip
        run_config = (
            f"data.dir='{data_dir}' output-dir='{tmp_path / 'runs'}' run-name='netns' {TINY}"
        )
        runner = group.start("flwr-run", [
            *on_nodes, str(BINDIR / "flwr"), "run", str(REPO), "remote", "--stream",
            "--run-config", run_config,
        ])  # fmt: skip
        try:
            runner.wait(timeout=400)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no result in 400 s: {(logs / 'flwr-run.log').read_text()[-3000:]}")
        stray_code = stray.wait(timeout=30)
    run_dir = tmp_path / "runs" / "netns"
    assert (run_dir / "done").is_file(), (logs / "flwr-run.log").read_text()[-4000:]
    rounds = read_rounds(run_dir / "rounds.jsonl")
    assert rounds[-1]["round"] == 1 and rounds[-1]["accepted"] == 2
    for name in names:
        node_log = (logs / f"{name}.log").read_text()
        assert "SuperNode ID:" in node_log and "Option `--insecure` was set" not in node_log
    assert stray_code == REFUSED_EXIT
    stray_log = (logs / "stray.log").read_text()
    assert f"does not name {UNNAMED_IP}" in stray_log and LINK_IP in stray_log
