"""TLS and SuperNode authentication for the processes certfl starts (Flower 1.36 flags).

One value, `Security`, says how Flower's processes talk: plaintext (`--insecure`), TLS, or TLS
with SuperNode authentication. Every command line that `certfl launch`, the compose files and
the multi-host recipe run takes its flags from the functions here, so the three never drift:

    SuperLink   --ssl-ca-certfile CA --ssl-certfile CERT --ssl-keyfile KEY [--enable-supernode-auth]
    SuperNode   --root-certificates CA [--auth-supernode-private-key KEY]
    flwr CLI    [superlink.<name>] address = ..., root-certificates = CA   ($FLWR_HOME/config.toml)

Flower 1.36 refuses `--enable-supernode-auth` without TLS, so authentication implies TLS. Allowed
keys are registered through the Control API (`flwr supernode register KEY.pub <connection>`);
the SuperLink's old `--auth-list-public-keys` file is gone. The Runtime API between a SuperLink
or SuperNode and its SuperExec stays on loopback (or a shared network namespace) in plaintext.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.credentials import CredentialPaths, ensure_credentials, node_names
from cli.processes import ProcessGroup
from cli.supernode_guard import REFUSED_EXIT, REPORT_PREFIX

INTRUDER_KINDS = ("unregistered", "keyless")


@dataclass(frozen=True)
class Security:
    """How the SuperLink, SuperNodes and the `flwr` CLI talk.

    Parameters
    ----------
    tls : encrypt the Fleet and Control APIs; clients verify the SuperLink's certificate.
    auth : the SuperLink accepts only SuperNodes whose public key was registered (needs tls).
    credentials : where the CA, SuperLink certificate and node keys are (needs tls).
    """

    tls: bool = False
    auth: bool = False
    credentials: CredentialPaths | None = None

    def __post_init__(self) -> None:
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it in plaintext)")
        if self.tls and self.credentials is None:
            raise ValueError("TLS needs a credentials directory")

    @property
    def creds(self) -> CredentialPaths:
        """The credentials; an error for a plaintext deployment."""
        if self.credentials is None:
            raise ValueError("this deployment runs without TLS: it has no credentials")
        return self.credentials


def superlink_flags(sec: Security) -> list[str]:
    """`flower-superlink` flags for `sec`.

    >>> superlink_flags(Security())
    ['--insecure']
    >>> superlink_flags(Security(True, True, CredentialPaths(Path("/c"))))[-1]
    '--enable-supernode-auth'
    """
    if not sec.tls:
        return ["--insecure"]
    c = sec.creds
    flags = [
        "--ssl-ca-certfile", str(c.ca_cert),
        "--ssl-certfile", str(c.superlink_cert),
        "--ssl-keyfile", str(c.superlink_key),
    ]  # fmt: skip
    return [*flags, "--enable-supernode-auth"] if sec.auth else flags


def supernode_flags(sec: Security, key_name: str | None) -> list[str]:
    """`flower-supernode` flags for `sec`; with auth, the private key of node `key_name`
    (None: a SuperNode without a key, which an authenticating SuperLink refuses).

    >>> supernode_flags(Security(), "supernode-0")
    ['--insecure']
    >>> tls_auth = Security(True, True, CredentialPaths(Path("/c")))
    >>> supernode_flags(tls_auth, "supernode-0")[-2:]
    ['--auth-supernode-private-key', '/c/supernodes/supernode-0.key']
    """
    if not sec.tls:
        return ["--insecure"]
    flags = ["--root-certificates", str(sec.creds.ca_cert)]
    if sec.auth and key_name is not None:
        flags += ["--auth-supernode-private-key", str(sec.creds.node_key(key_name))]
    return flags


def connection_toml(name: str, address: str, sec: Security, default: bool = True) -> str:
    """A `[superlink.<name>]` connection for `$FLWR_HOME/config.toml` (Flower 1.36's format).

    >>> tls = Security(True, False, CredentialPaths(Path("/c")))
    >>> print(connection_toml("prod", "10.0.0.1:9093", tls))
    [superlink]
    default = "prod"
    <BLANKLINE>
    [superlink.prod]
    address = "10.0.0.1:9093"
    root-certificates = "/c/ca.crt"
    <BLANKLINE>
    """
    head = f'[superlink]\ndefault = "{name}"\n\n' if default else ""
    if sec.tls:
        # Flower requires an absolute path here
        trust = f'root-certificates = "{Path(sec.creds.ca_cert).absolute()}"'
    else:
        trust = "insecure = true"
    return f'{head}[superlink.{name}]\naddress = "{address}"\n{trust}\n'


def register_keys(
    flwr: Sequence[str], public_keys: Iterable[Path], connection: str, env: Mapping[str, str]
) -> list[str]:
    """Register each public key with the SuperLink of `connection` through its Control API
    (`flwr supernode register KEY.pub CONNECTION`, `flwr` the command that runs the Flower CLI);
    a key registered before counts as done.

    Returns one line per key saying what happened; raises RuntimeError naming the key and
    Flower's message when one cannot be registered.
    """
    outcomes = []
    for key in public_keys:
        argv = [*flwr, "supernode", "register", "--format", "json", str(key)]
        argv += [connection] if connection else []
        proc = subprocess.run(argv, capture_output=True, text=True, env=dict(env), timeout=120)
        reply = _json_reply(proc.stdout)
        if reply.get("success"):
            outcomes.append(f"{key.name}: registered as node {reply['node-id']}")
        elif "Public key already in use" in str(reply.get("error-message", "")):
            outcomes.append(f"{key.name}: already registered")
        else:
            message = reply.get("error-message") or (proc.stdout + proc.stderr).strip()
            raise RuntimeError(f"could not register {key} with the SuperLink: {message}")
    return outcomes


def _json_reply(text: str) -> dict:
    """The JSON object `flwr ... --format json` printed (Flower may print lines before it)."""
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


# --- certfl launch -------------------------------------------------------------------------


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """`certfl launch` options for TLS and SuperNode authentication."""
    p.add_argument("--tls", action="store_true", help="TLS on the Fleet and Control APIs")
    p.add_argument(
        "--auth", action="store_true",
        help="SuperNode authentication (implies --tls): each SuperNode gets an EC key pair whose "
        "public key is registered with `flwr supernode register` before it starts",
    )  # fmt: skip
    p.add_argument(
        "--credentials", default="",
        help="credentials directory (`certfl credentials`; missing files are made); default: a "
        "fresh one in the launch's work directory",
    )  # fmt: skip
    p.add_argument(
        "--intruders", default="",
        help="with --auth, also start SuperNodes that must be refused, comma-separated kinds: "
        "'unregistered' (a key the SuperLink never registered), 'keyless' (no key)",
    )  # fmt: skip


def launch_security(args: argparse.Namespace, work: Path, n: int) -> Security:
    """The `Security` that `certfl launch`'s options ask for, with its credentials made."""
    intruders = parse_intruders(args.intruders)
    if intruders and not args.auth:
        raise SystemExit("--intruders needs --auth: without it every SuperNode is accepted")
    if not (args.tls or args.auth):
        if args.credentials:
            raise SystemExit("--credentials needs --tls or --auth")
        return Security()
    root = Path(args.credentials).resolve() if args.credentials else work / "credentials"
    names = node_names(n) + [intruder_name(i) for i, _ in enumerate(intruders)]
    try:
        paths, _ = ensure_credentials(root, node_names=names)
    except ValueError as err:
        raise SystemExit(f"--credentials: {err}") from None
    return Security(tls=True, auth=args.auth, credentials=paths)


def parse_intruders(spec: str) -> list[str]:
    """The kinds of refused SuperNodes `--intruders` asks for.

    >>> parse_intruders("unregistered, keyless")
    ['unregistered', 'keyless']
    """
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    for kind in kinds:
        if kind not in INTRUDER_KINDS:
            raise SystemExit(f"--intruders: {kind!r} is not one of {', '.join(INTRUDER_KINDS)}")
    return kinds


def intruder_name(index: int) -> str:
    """The process (and key) name of the index-th intruder."""
    return f"intruder-{index}"


def supernode_command(bindir: Path, sec: Security, key_name: str | None) -> list[str]:
    """The start of a SuperNode's command line: Flower's `flower-supernode` under certfl's guard
    (which explains refusals and forwards SIGTERM), with the security flags of `sec`."""
    guard = [sys.executable, "-m", "cli.supernode_guard", "--flower-supernode"]
    return [*guard, str(bindir / "flower-supernode"), *supernode_flags(sec, key_name)]


def register_launch_nodes(sec: Security, names: Sequence[str], bindir: Path, env: Mapping) -> None:
    """With auth, register the keys of the SuperNodes `names` at the launch's SuperLink."""
    if not sec.auth:
        return
    keys = [sec.creds.node_public_key(name) for name in names]
    for line in register_keys([str(bindir / "flwr")], keys, "launch", env):
        print(f"[launch] {line}", flush=True)


def start_intruders(
    group: ProcessGroup, sec: Security, spec: str, fleet: int, ports: Sequence[int], bindir: Path
) -> list[str]:
    """Start the SuperNodes `--intruders` asks for (they dial the launch's Fleet API on
    127.0.0.1:`fleet`, their Runtime APIs on `ports`); returns their names."""
    names = []
    for i, (kind, port) in enumerate(zip(parse_intruders(spec), ports, strict=False)):
        name = intruder_name(i)
        key = name if kind == "unregistered" else None
        group.start(name, [
            *supernode_command(bindir, sec, key),
            "--superlink", f"127.0.0.1:{fleet}", "--host", "127.0.0.1", "--port", str(port),
            "--node-config", "partition-id=0 num-partitions=1 role='benign'",
        ])  # fmt: skip
        names.append(name)
    return names


class SupernodeWatch:
    """Watches SuperNode processes of a `ProcessGroup`: prints why one was refused the moment
    it exits with the guard's refusal code, and stops them before anything else.

    With SuperNode authentication a SuperNode must leave with SIGTERM: Flower then deactivates
    it at the SuperLink, and the same key can rejoin at once. A SuperNode that dies otherwise
    stays "online" at the SuperLink until two missed heartbeats (60 s in Flower 1.36), and its
    key is refused until then. So `stop()` signals the SuperNodes first and waits for them,
    while the SuperLink still runs to receive their goodbyes.

    Parameters
    ----------
    group : the `cli.processes.ProcessGroup` the SuperNodes were started in (its `procs`).
    log_dir : where the group writes `<name>.log`.
    poll_seconds : how often exits are checked.
    """

    def __init__(self, group: ProcessGroup, log_dir: Path, poll_seconds: float = 0.5) -> None:
        self.group = group
        self.log_dir = log_dir
        self.poll_seconds = poll_seconds
        self.names: list[str] = []
        self.reported: set[str] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def watch(self, names: Iterable[str]) -> SupernodeWatch:
        """Start watching the SuperNodes `names` (already started in the group)."""
        self.names += list(names)
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(self.poll_seconds):
            self.report()

    def report(self) -> list[str]:
        """Print (once) the reason of every watched SuperNode that was refused; return them."""
        lines = []
        for name in self.names:
            proc = self.group.procs.get(name)
            if name in self.reported or proc is None or proc.poll() != REFUSED_EXIT:
                continue
            self.reported.add(name)
            reason = refusal_reason(self.log_dir / f"{name}.log")
            lines.append(f"[launch] {name} was refused: {reason}")
            print(lines[-1], flush=True)
        return lines

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every watched SuperNode that still runs and wait for them to leave."""
        self._done.set()
        procs = [self.group.procs[n] for n in self.names if n in self.group.procs]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # the group kills what is left
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.report()


def refusal_reason(log_file: Path) -> str:
    """The guard's explanation in a SuperNode's log (its last `[certfl]` line)."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return f"(no log at {log_file})"
    reasons = [line.split(REPORT_PREFIX, 1)[1].strip() for line in lines if REPORT_PREFIX in line]
    return reasons[-1] if reasons else f"see {log_file}"
