"""`python -m cli.supernode_guard [--flower-supernode PATH] ARGS...`: Flower's SuperNode, explained.

Runs certfl's SuperNode `python -m cli.supernode ARGS...` (`flower-supernode ARGS...` plus
`--heartbeat-interval`; `--flower-supernode PATH` runs the program at PATH instead) unchanged,
copies its output, and adds what Flower 1.36 leaves out. A SuperNode the SuperLink refuses logs
a gRPC error (FAILED_PRECONDITION, code 2001 or 2004) and then hangs instead of exiting; one that
dials a TLS SuperLink by a name its certificate does not list, or that speaks plaintext to a TLS
SuperLink, retries forever in silence. The guard turns each case into one line a person
understands (prefixed `[certfl] SuperNode refused:`), stops the SuperNode and exits with code 3,
so a supervisor (certfl launch, docker, systemd) sees the failure. It probes the SuperLink's TLS
once it answers, with Python's ssl module and the same root certificates, to name a
certificate/address mismatch.

SIGTERM and SIGINT are passed to the SuperNode once: Flower then deactivates the node at the
SuperLink, which lets the same key rejoin at once (with SuperNode authentication a node that
dies without it is refused until the SuperLink misses two heartbeats, 2 x 30 s by default). When
the whole process tree is signalled at once (as `certfl launch` does), the guard sees that the
SuperNode already took the signal and does not send a second one, which would kill it
mid-goodbye.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REFUSED_EXIT = 3
REPORT_PREFIX = "[certfl] SuperNode refused:"
PROBE_EVERY_S = 2.0
# Flower's HEARTBEAT_DEFAULT_INTERVAL and HEARTBEAT_PATIENCE (flwr.common.constant; not imported
# here, which would load most of Flower into every guard): a SuperNode that stops without a
# goodbye counts as online for HEARTBEAT_PATIENCE x its interval.
DEFAULT_HEARTBEAT_S = 30.0
HEARTBEAT_PATIENCE = 2


@dataclass(frozen=True)
class NodeArgs:
    """What the guard needs from a `flower-supernode` command line.

    Parameters
    ----------
    superlink : the Fleet API address dialled (host:port).
    insecure : plaintext, no TLS.
    root_certificates : the CA bundle that verifies the SuperLink, if any.
    private_key : the authentication key, if any.
    heartbeat_interval : the seconds between heartbeats the SuperNode declares.
    """

    superlink: str
    insecure: bool
    root_certificates: str | None
    private_key: str | None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_S

    @property
    def host_port(self) -> tuple[str, int]:
        """`superlink` split into host and port (`[v6]:port` too).

        >>> NodeArgs("[::1]:9092", True, None, None).host_port
        ('::1', 9092)
        """
        host, _, port = self.superlink.rpartition(":")
        return host.strip("[]"), int(port)


def parse_node_args(argv: Sequence[str]) -> NodeArgs:
    """The flags of a `flower-supernode` command line the guard reads (Flower's defaults).

    >>> parse_node_args(["--insecure", "--superlink", "10.0.0.1:9092"]).superlink
    '10.0.0.1:9092'
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--superlink", default="127.0.0.1:9092")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--root-certificates", default=None)
    p.add_argument("--auth-supernode-private-key", default=None)
    p.add_argument("--heartbeat-interval", type=float, default=DEFAULT_HEARTBEAT_S)
    known, _ = p.parse_known_args(list(argv))
    return NodeArgs(
        known.superlink,
        known.insecure,
        known.root_certificates,
        known.auth_supernode_private_key,
        known.heartbeat_interval,
    )


def explain(line: str, node: NodeArgs) -> str | None:
    """The plain-words reason behind a line of `flower-supernode` output, if it is a refusal.

    >>> node = NodeArgs("10.0.0.1:9092", False, "/c/ca.crt", None)
    >>> explain('details = "{"code": 2001, "public_message": "SuperNode authentication is '
    ...         'enabled. All SuperNodes must be registered via the CLI."}"', node)[:60]
    'the SuperLink at 10.0.0.1:9092 requires SuperNode authentica'
    >>> explain("INFO :      SuperNode ID: 42", node) is None
    True
    """
    link = node.superlink
    if '"code": 2001' in line or "must be registered via the CLI" in line:
        return (
            f"the SuperLink at {link} requires SuperNode authentication and this SuperNode has "
            "no key. Start it with --auth-supernode-private-key KEY (an EC key in OpenSSH "
            "format, e.g. from `certfl credentials`) after registering KEY.pub with "
            "`flwr supernode register KEY.pub <connection>`."
        )
    if '"code": 2004' in line or "Failed to activate SuperNode" in line:
        key = node.private_key or "(none)"
        return (
            f"the SuperLink at {link} does not accept the key {key}. Either its public key "
            f"was never registered (run `flwr supernode register {_public_key(key)} "
            "<connection>` against the SuperLink's Control API), or a SuperNode with this key "
            "is still counted online because it stopped without SIGTERM: the SuperLink "
            f"forgets it {HEARTBEAT_PATIENCE * node.heartbeat_interval:g} s after its last "
            "heartbeat, then this key can rejoin."
        )
    if "WRONG_VERSION_NUMBER" in line and not node.insecure:
        return (
            f"the SuperLink at {link} does not speak TLS (it runs with --insecure), but this "
            "SuperNode was given --root-certificates. Start both with TLS or both without."
        )
    if "CERTIFICATE_VERIFY_FAILED" in line or "SSL/TLS handshake error detected" in line:
        return (
            f"the TLS certificate of the SuperLink at {link} is not signed by the CA in "
            f"{node.root_certificates}: give --root-certificates the CA that signed the "
            "SuperLink's certificate (ca.crt of the same `certfl credentials` directory)."
        )
    return None


def _public_key(private_key: str) -> str:
    """The `.pub` next to a private key file, as `certfl credentials` writes them."""
    path = Path(private_key)
    return str(path.with_suffix(".pub")) if path.suffix == ".key" else f"{private_key}.pub"


def probe_tls(node: NodeArgs, timeout: float = 5.0) -> str | None | bool:
    """Check the SuperLink's TLS the way gRPC will: True when it verifies, a reason (str) when
    it cannot, None when the SuperLink does not answer yet.

    A plaintext SuperNode (`--insecure`) is checked the other way round: the reason says so if
    the SuperLink turns out to speak TLS.
    """
    host, port = node.host_port
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with raw:
        if node.insecure:
            return _tls_spoken(raw, host, node)
        context = ssl.create_default_context(cafile=node.root_certificates)
        context.set_alpn_protocols(["h2"])
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return True
        except ssl.SSLCertVerificationError as err:
            if "Hostname mismatch" in str(err.verify_message) or "IP address mismatch" in str(
                err.verify_message
            ):
                names = ", ".join(sorted(_peer_names(host, port, timeout))) or "none"
                return (
                    f"the TLS certificate of the SuperLink does not name {host}, the address "
                    f"this SuperNode dials (it names: {names}). Dial one of those, or make a "
                    f"certificate that names it: `certfl credentials DIR --san {host}`."
                )
            return explain("CERTIFICATE_VERIFY_FAILED", node)
        except ssl.SSLError as err:
            if "WRONG_VERSION_NUMBER" in str(err) or "record layer" in str(err):
                return explain("WRONG_VERSION_NUMBER", node)
            return None
        except OSError:
            return None


def _tls_spoken(raw: socket.socket, host: str, node: NodeArgs) -> str | bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with context.wrap_socket(raw, server_hostname=host):
            pass
    except (ssl.SSLError, OSError):
        return True  # no TLS handshake: a plaintext SuperLink, as this SuperNode expects
    return (
        f"this SuperNode runs with --insecure but the SuperLink at {node.superlink} speaks TLS: "
        "start it with --root-certificates CA.crt (the CA that signed the SuperLink's "
        "certificate) instead of --insecure."
    )


def _peer_names(host: str, port: int, timeout: float) -> set[str]:
    """The subject alternative names of the certificate served at host:port (unverified)."""
    from cryptography import x509

    from cli.credentials import certificate_sans

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError):
        return set()
    return certificate_sans(x509.load_der_x509_certificate(der)) if der else set()


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` still has a handler for `signum` (Flower resets its handlers to
    the default the moment it starts a graceful exit)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return True  # no /proc: assume the signal still has to be passed on


class Guard:
    """One `flower-supernode` process under watch; see the module docstring.

    Parameters
    ----------
    command : the full `flower-supernode` command line.
    node : what that command line dials and with which credentials.
    out : where the SuperNode's output and the guard's lines go.
    """

    def __init__(self, command: Sequence[str], node: NodeArgs, out=sys.stdout) -> None:
        self.command = list(command)
        self.node = node
        self.out = out
        self.refusal: str | None = None
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def refuse(self, reason: str) -> None:
        """Report `reason` once and stop the SuperNode."""
        with self._lock:
            if self.refusal is not None:
                return
            self.refusal = reason
        self._write(f"{REPORT_PREFIX} {reason}\n")
        self._stop()

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()

    def _stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    def forward(self, signum: int, _frame: object) -> None:
        """Signal handler: pass SIGTERM/SIGINT on unless the SuperNode already took it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return

        def later() -> None:
            time.sleep(0.5)  # a signal sent to the whole tree reaches the child meanwhile
            if proc.poll() is None and _catches(proc.pid, signal.SIGTERM):
                proc.send_signal(signal.SIGTERM)

        threading.Thread(target=later, daemon=True).start()

    def _probe(self) -> None:
        while self.proc is not None and self.proc.poll() is None and self.refusal is None:
            verdict = probe_tls(self.node)
            if isinstance(verdict, str):
                self.refuse(verdict)
                return
            if verdict is True:
                return
            time.sleep(PROBE_EVERY_S)

    def run(self) -> int:
        """Run the SuperNode to its end; its exit code, or 3 when it was refused."""
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._probe, daemon=True).start()
        # The SuperNode's own children (its SuperExec) inherit the pipe and may outlive it, so
        # the end of the SuperNode, not the end of its output, ends the guard.
        reader = threading.Thread(target=self._relay, daemon=True)
        reader.start()
        code = self.proc.wait()
        reader.join(timeout=2.0)
        return REFUSED_EXIT if self.refusal is not None else code

    def _relay(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self._write(line)
            reason = explain(line, self.node)
            if reason is not None:
                threading.Thread(target=self.refuse, args=(reason,), daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the guarded SuperNode with the arguments after the optional --flower-supernode PATH."""
    args = list(sys.argv[1:] if argv is None else argv)
    program = [sys.executable, "-m", "cli.supernode"]
    if args[:1] == ["--flower-supernode"]:
        program, args = [args[1]], args[2:]
    guard = Guard([*program, *args], parse_node_args(args))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, guard.forward)
    return guard.run()


if __name__ == "__main__":
    raise SystemExit(main())
