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
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cli.credentials import CredentialPaths, ensure_credentials
from cli.processes import ProcessGroup
from cli.supernode_guard import REPORT_PREFIX
from core.config import ConfigError

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


def check_launch_options(tls: bool, auth: bool, credentials: str, intruders: str) -> list[str]:
    """The kinds of refused SuperNodes asked for, once the options `--tls`, `--auth`,
    `--credentials` and `--intruders` fit together (ConfigError naming the option otherwise).

    >>> check_launch_options(True, True, "", "keyless")
    ['keyless']
    """
    kinds = parse_intruders(intruders)
    if kinds and not auth:
        raise ConfigError("--intruders needs --auth: without it every SuperNode is accepted")
    if credentials and not (tls or auth):
        raise ConfigError("--credentials needs --tls or --auth")
    return kinds


def launch_security(tls: bool, auth: bool, credentials: Path, names: Sequence[str]) -> Security:
    """The `Security` of a launch: with `tls` (or `auth`, which implies it) the credentials
    directory `credentials` with a key pair for each of `names`, made where missing; ConfigError
    when the directory cannot serve (e.g. a certificate that lacks an address)."""
    if not (tls or auth):
        return Security()
    try:
        paths, _ = ensure_credentials(credentials, node_names=list(names))
    except ValueError as err:
        raise ConfigError(f"--credentials {credentials}: {err}") from None
    return Security(tls=True, auth=auth, credentials=paths)


def parse_intruders(spec: str) -> list[str]:
    """The kinds of refused SuperNodes `--intruders` asks for.

    >>> parse_intruders("unregistered, keyless")
    ['unregistered', 'keyless']
    """
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    for kind in kinds:
        if kind not in INTRUDER_KINDS:
            raise ConfigError(f"--intruders entry {kind!r}: allowed: {', '.join(INTRUDER_KINDS)}")
    return kinds


def intruder_name(index: int) -> str:
    """The process (and key) name of the index-th intruder."""
    return f"intruder-{index}"


def supernode_command(
    sec: Security, key_name: str | None, heartbeat_interval: float | None = None
) -> list[str]:
    """The start of a SuperNode's command line: certfl's SuperNode (`python -m cli.supernode`,
    Flower's `flower-supernode` with a heartbeat interval of `heartbeat_interval` seconds, or
    Flower's default when None) under certfl's guard (which explains refusals and passes SIGTERM
    on once), with the security flags of `sec`.

    >>> supernode_command(Security(), None, 10.0)[2:]
    ['cli.supernode_guard', '--heartbeat-interval', '10', '--insecure']
    """
    beat = [] if heartbeat_interval is None else ["--heartbeat-interval", f"{heartbeat_interval:g}"]
    return [sys.executable, "-m", "cli.supernode_guard", *beat, *supernode_flags(sec, key_name)]


def register_launch_nodes(sec: Security, names: Sequence[str], bindir: Path, env: Mapping) -> None:
    """With auth, register the keys of the SuperNodes `names` at the launch's SuperLink."""
    if not sec.auth:
        return
    keys = [sec.creds.node_public_key(name) for name in names]
    for line in register_keys([str(bindir / "flwr")], keys, "launch", env):
        print(f"[launch] {line}", flush=True)


def start_intruders(
    group: ProcessGroup, sec: Security, kinds: Sequence[str], fleet: int, ports: Sequence[int]
) -> list[str]:
    """Start the SuperNodes `--intruders` asks for, one per kind (they dial the launch's Fleet
    API on 127.0.0.1:`fleet`, their Runtime APIs on `ports`); returns their names."""
    names = []
    for i, (kind, port) in enumerate(zip(kinds, ports, strict=True)):
        name = intruder_name(i)
        key = name if kind == "unregistered" else None
        group.start(name, [
            *supernode_command(sec, key),
            "--superlink", f"127.0.0.1:{fleet}", "--host", "127.0.0.1", "--port", str(port),
            "--node-config", "partition-id=0 num-partitions=1 role='benign'",
        ])  # fmt: skip
        names.append(name)
    return names


def refusal_reason(log_file: Path) -> str:
    """The guard's explanation in a SuperNode's log (its last `[certfl]` line)."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return f"(no log at {log_file})"
    reasons = [line.split(REPORT_PREFIX, 1)[1].strip() for line in lines if REPORT_PREFIX in line]
    return reasons[-1] if reasons else f"see {log_file}"
