"""The SuperNode guard: Flower's refusal lines in plain words, a refused SuperNode stopped with exit
code 3, and SIGTERM passed on exactly once.

The lines below are copied from Flower 1.36 SuperNodes refused by a real SuperLink (TLS with
`--enable-supernode-auth`). The process tests run the guard around a stand-in for
`flower-supernode` (a few lines of Python that print and handle signals as Flower does): the
guard's own logic is under test here; tests/cli/test_tls_launch.py runs it around real ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flwr.common import constant

from cli.supernode_guard import (
    DEFAULT_HEARTBEAT_S,
    HEARTBEAT_PATIENCE,
    REFUSED_EXIT,
    REPORT_PREFIX,
    NodeArgs,
    explain,
    parse_node_args,
)

KEYLESS = (
    '\tdetails = "{"code": 2001, "public_message": "SuperNode authentication is enabled. '
    'All SuperNodes must be registered via the CLI.", "public_details": null}"'
)
UNREGISTERED = (
    '\tdetails = "{"code": 2004, "public_message": "Failed to activate SuperNode.", '
    '"public_details": null}"'
)
WRONG_CA = (
    "ERROR :     SSL/TLS handshake error detected.\n"
    "I1201 21:52:18.676531   13538 ssl_transport_security.cc:2563] Handshake failed with error "
    "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
    "unable to get local issuer certificate"
)
NODE = NodeArgs("10.0.0.1:9092", False, "/c/ca.crt", "/c/supernodes/supernode-3.key")


def test_each_refusal_is_explained_with_what_to_do() -> None:
    keyless = explain(KEYLESS, NODE)
    assert "requires SuperNode authentication" in keyless and "no key" in keyless
    refused = explain(UNREGISTERED, NODE)
    assert "/c/supernodes/supernode-3.key" in refused
    assert "flwr supernode register /c/supernodes/supernode-3.pub" in refused
    assert "without SIGTERM" in refused  # the other cause: the key is still online
    wrong_ca = explain(WRONG_CA.splitlines()[1], NODE)
    assert "not signed by the CA in /c/ca.crt" in wrong_ca
    assert explain("INFO :      SuperNode ID: 1234", NODE) is None
    assert explain("WARNING :   Connection attempt failed, retrying in 0.30 seconds", NODE) is None


def test_node_args_follow_flower_defaults() -> None:
    assert parse_node_args([]) == NodeArgs("127.0.0.1:9092", False, None, None)
    args = ["--root-certificates", "ca", "--superlink", "h:1", "--node-config", "a=1"]
    assert parse_node_args(args) == NodeArgs("h:1", False, "ca", None)
    # the guard does not import Flower; its copies of Flower's constants must not drift
    assert (DEFAULT_HEARTBEAT_S, HEARTBEAT_PATIENCE) == (
        constant.HEARTBEAT_DEFAULT_INTERVAL,
        constant.HEARTBEAT_PATIENCE,
    )


def test_the_rejoin_delay_named_is_the_heartbeat_window_of_the_node() -> None:
    node = parse_node_args(["--heartbeat-interval", "12", "--auth-supernode-private-key", "k"])
    assert node.heartbeat_interval == 12.0
    assert "forgets it 24 s after its last heartbeat" in explain(UNREGISTERED, node)
    assert "forgets it 60 s after" in explain(UNREGISTERED, NODE)  # Flower's default 30 s


# A stand-in for flower-supernode: prints the given lines, then waits; on SIGTERM it does what
# Flower does (reset the handler to the default, say goodbye, exit 0 after a moment), so a second
# SIGTERM would kill it (exit -15).
STAND_IN = textwrap.dedent(
    """
    import signal, sys, time
    def bye(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print("terminated gracefully", flush=True)
        time.sleep(1.5)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    print("INFO :      Starting Flower SuperNode", flush=True)
    for line in sys.argv[1:]:
        print(line, flush=True)
    print("ready", flush=True)
    while True:
        time.sleep(0.1)
    """
)


def _guarded(tmp_path: Path, *lines: str) -> subprocess.Popen:
    stand_in = tmp_path / "flower-supernode"
    stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
    stand_in.chmod(0o755)
    return subprocess.Popen(
        [sys.executable, "-m", "cli.supernode_guard", "--flower-supernode", str(stand_in),
         "--insecure", "--superlink", "127.0.0.1:1", *lines],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip


def _wait_for(proc: subprocess.Popen, text: str) -> list[str]:
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return seen
    pytest.fail(f"{text!r} never printed; output: {''.join(seen)}")


def test_a_refused_supernode_is_stopped_and_the_guard_exits_3(tmp_path: Path) -> None:
    proc = _guarded(tmp_path, UNREGISTERED)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == REFUSED_EXIT, out
    assert f"{REPORT_PREFIX} the SuperLink at 127.0.0.1:1 does not accept the key" in out
    assert "terminated gracefully" in out  # stopped with SIGTERM, not killed


@pytest.mark.parametrize("whole_tree", [False, True])
def test_sigterm_reaches_the_supernode_exactly_once(tmp_path: Path, whole_tree: bool) -> None:
    proc = _guarded(tmp_path)
    try:
        _wait_for(proc, "ready")
        if whole_tree:  # as certfl launch stops a process tree: every process at once
            os.killpg(proc.pid, signal.SIGTERM)
        else:  # as docker's init passes `docker stop` to the guard alone
            proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "terminated gracefully" in out
    assert proc.returncode == 0, out  # a second SIGTERM would have killed it: -15
    assert time.monotonic() - started >= 1.0  # the guard waited for the goodbye
