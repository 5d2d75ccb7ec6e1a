"""`certfl launch`: a real deployment on this machine, one SuperLink and N SuperNodes over gRPC.

Checks the roles, the run config and the security options first (nothing starts when one is
bad), then starts `flower-superlink` (Fleet API over gRPC on loopback, its state in `state.db` in
the launch directory), N SuperNodes each with its node config (partition-id, num-partitions,
role) and a heartbeat interval (`--heartbeat-interval`: a SuperNode that dies is noticed after
twice that), waits until the SuperLink sees all N online, submits the app with `flwr run` and one
merged run-config file, streams the server's per-round lines, and stops every process it started
(the SuperNodes before the SuperLink, so that they sign off), also on Ctrl-C, on SIGTERM, on
failure and on `--timeout`.

`--tls` encrypts the Fleet and Control APIs; `--auth` (implies `--tls`) also registers each
SuperNode's public key before it starts and refuses any other (cli/tls.py). Every SuperNode runs
under certfl's guard (cli/supernode_guard.py): one that the SuperLink refuses exits with code 3
and the launcher prints why. `--intruders` starts such SuperNodes on purpose.

The launch directory `<output-dir>/.<run-name>.launch/` holds the Flower home, the logs, the
SuperLink's database, the credentials (unless `--credentials DIR`) and `launch.json` (app,
SuperNodes, roles, overrides, TLS and auth). `--resume RUN_DIR` starts the same deployment again
and continues the run from its last checkpoint (run config key `resume-from`,
server/checkpoint.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from flwr.common.constant import (
    HEARTBEAT_DEFAULT_INTERVAL,
    HEARTBEAT_MAX_INTERVAL,
    HEARTBEAT_MIN_INTERVAL,
)

from attacks.registry import check_role
from cli import tls
from cli.credentials import node_names
from cli.processes import ProcessGroup, free_ports, signals_interrupt, wait_for_port
from cli.run_config import merge_overrides, resolve, toml_document
from cli.supernode_guard import REFUSED_EXIT
from core.config import ConfigError
from core.roles import BENIGN
from server.checkpoint import RESUME_FILE, check_resumable, load_resume_point

MANIFEST = "launch.json"
NODES_ONLINE_TIMEOUT = 180.0  # seconds for every SuperNode to come online at the start


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl launch`."""
    p = subparsers.add_parser("launch", help="run the app over gRPC: 1 SuperLink + N SuperNodes")
    p.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    p.add_argument("-n", "--supernodes", type=int, default=4, help="number of SuperNodes")
    p.add_argument(
        "--roles",
        default="",
        help="comma-separated role per SuperNode (benign | fl-wbc | attack:<name>); "
        "a shorter list is padded with 'benign'",
    )
    p.add_argument(
        "-c", "--run-config", action="append", default=[],
        help="run config overrides 'k=v ...' or a .toml file (repeatable; merged key by key)",
    )  # fmt: skip
    p.add_argument("--output-dir", default="runs", help="where the run directory is created")
    p.add_argument("--run-name", default="", help="run directory name (default: a timestamp)")
    p.add_argument("--data-dir", default="", help="sets CERTFL_DATA for every process")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
    p.add_argument("--threads", type=int, default=1, help="torch threads per ClientApp process")
    p.add_argument(
        "--heartbeat-interval", type=float, default=HEARTBEAT_DEFAULT_INTERVAL,
        help="seconds between SuperNode heartbeats (10..1800); a SuperNode that stops sending "
        "them is lost after twice this",
    )  # fmt: skip
    p.add_argument(
        "--resume", default="", metavar="RUN_DIR",
        help="continue RUN_DIR (made by certfl launch) from its last checkpoint, with the same "
        "app, SuperNodes, roles, TLS and auth; -c adds overrides (e.g. more rounds)",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="stream every Flower log line")
    tls.add_launch_arguments(p)  # --tls, --auth, --credentials, --intruders


@dataclass(frozen=True)
class Deployment:
    """What `certfl launch` starts; saved as launch.json so that `--resume` starts it again."""

    app: str
    supernodes: int
    roles: list[str]
    run_config: dict  # the user's overrides, merged and flat
    heartbeat_interval: float
    tls: bool = False
    auth: bool = False  # implies tls
    credentials: str = ""  # the credentials directory, with tls

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Deployment:
        return cls(**json.loads(path.read_text()))


def node_roles(spec: str, n: int) -> list[str]:
    """The role of each of the `n` SuperNodes from a comma-separated list, padded with benign;
    each must be a known role naming a registered policy (ConfigError otherwise)."""
    roles = [r.strip() for r in spec.split(",") if r.strip()] if spec else []
    if len(roles) > n:
        raise ConfigError(f"--roles names {len(roles)} roles for {n} SuperNodes")
    return [check_role(r, "--roles entry") for r in roles] + [BENIGN] * (n - len(roles))


def plan(args: argparse.Namespace) -> tuple[Deployment, Path, dict, list[str]]:
    """The deployment to start, the run directory, the flat run-config overrides the run gets
    and the kinds of `--intruders`; ConfigError (nothing started) when the roles, the
    overrides, the security options or the resume are bad."""
    if args.resume:
        run_dir = Path(args.resume).resolve()
        manifest = launch_dir(run_dir) / MANIFEST
        if not manifest.is_file():
            raise ConfigError(f"--resume {run_dir}: no {manifest} (not started by certfl launch)")
        deployment = Deployment.load(manifest)
        extra = merge_overrides(args.run_config)
        deployment = replace(deployment, run_config={**deployment.run_config, **extra})
        resume = {"resume-from": str(run_dir)}
    else:
        if args.supernodes < 1:
            raise ConfigError(f"--supernodes = {args.supernodes}: must be >= 1")
        low, high = HEARTBEAT_MIN_INTERVAL, HEARTBEAT_MAX_INTERVAL
        if not low <= args.heartbeat_interval <= high:
            raise ConfigError(
                f"--heartbeat-interval = {args.heartbeat_interval:g}: the SuperLink accepts "
                f"{low} to {high} seconds"
            )
        tls.check_launch_options(args.tls, args.auth, args.credentials, "")
        name = args.run_name or datetime.now(UTC).strftime("launch-%Y%m%d-%H%M%S")
        run_dir = Path(args.output_dir).resolve() / name
        secure = args.tls or args.auth
        credentials = Path(args.credentials or launch_dir(run_dir) / "credentials").resolve()
        deployment = Deployment(
            app=str(Path(args.app).resolve()),
            supernodes=args.supernodes,
            roles=node_roles(args.roles, args.supernodes),
            run_config=merge_overrides(args.run_config),
            heartbeat_interval=args.heartbeat_interval,
            tls=secure,
            auth=args.auth,
            credentials=str(credentials) if secure else "",
        )
        resume = {}
    intruders = tls.check_launch_options(deployment.tls, deployment.auth, "", args.intruders)
    where = {"output-dir": str(run_dir.parent), "run-name": run_dir.name}
    overrides = {**deployment.run_config, **where, **resume}
    cfg = resolve(Path(deployment.app), overrides)
    if args.resume:
        check_resumable(cfg, load_resume_point(run_dir))
    return deployment, run_dir, overrides, intruders


def launch_dir(run_dir: Path) -> Path:
    """The launch directory beside a run directory: `<output-dir>/.<run-name>.launch`."""
    return run_dir.parent / f".{run_dir.name}.launch"


def shown(line: str) -> bool:
    """Whether `certfl launch` echoes a line of Flower's output: certfl's own lines, warnings,
    errors, and the last line of a traceback (the exception and its message).

    >>> shown("core.data.DataNotFoundError: mnist: missing ... in /data")
    True
    >>> shown('  File "server/app.py", line 46, in main')
    False
    """
    tagged = any(tag in line for tag in ("[certfl]", "WARNING", "ERROR"))
    return tagged or _EXCEPTION_LINE.match(line) is not None


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\w*: ")


def _relay(stream, log_file: Path, verbose: bool) -> None:
    """Copy `flwr run --stream` output to a log file; echo the lines that are `shown`."""
    with log_file.open("w", encoding="utf-8") as log:
        for raw in stream:
            line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            log.write(line)
            log.flush()
            if verbose or shown(line):
                sys.stdout.write(line)
                sys.stdout.flush()


def online_nodes(env: dict[str, str]) -> int:
    """How many SuperNodes the SuperLink of `env`'s Flower home sees online (-1: no answer)."""
    flwr = str(Path(sys.executable).parent / "flwr")
    try:
        out = subprocess.run(
            [flwr, "supernode", "list", "--format", "json"],
            env=env, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        nodes = json.loads(out[out.index("{") :])["nodes"]
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        return -1
    return sum(node.get("status") == "online" for node in nodes)


def wait_for_nodes(
    group: ProcessGroup,
    env: dict[str, str],
    n: int,
    timeout: float,
    expendable: Collection[str] = (),
) -> None:
    """Block until the SuperLink sees `n` SuperNodes online; fail if a process of the group
    other than the `expendable` ones (e.g. intruders, which are meant to be refused) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [
            name
            for name, proc in group.procs.items()
            if proc.poll() is not None and name not in expendable
        ]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while starting (see the logs)")
        if online_nodes(env) >= n:
            return
        time.sleep(2.0)  # each look runs the flwr CLI, which the starting nodes compete with
    raise TimeoutError(f"the SuperLink did not see {n} SuperNodes online within {timeout:.0f}s")


def run(args: argparse.Namespace) -> int:
    """Start the deployment, run the app, stop everything; 0 when the run directory is complete
    (1: incomplete, 2: bad input, nothing started, 130: interrupted)."""
    try:
        deployment, run_dir, overrides, intruders = plan(args)
        names = node_names(deployment.supernodes)
        intruder_names = [tls.intruder_name(i) for i in range(len(intruders))]
        security = tls.launch_security(
            deployment.tls, deployment.auth, Path(deployment.credentials), names + intruder_names
        )
    except ConfigError as err:
        print(f"[launch] nothing started: {err}", flush=True)
        return 2
    work = launch_dir(run_dir)
    home = work / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    deployment.save(work / MANIFEST)  # a resume's extra overrides stay for the next one
    config_file = work / "run-config.toml"
    config_file.write_text(toml_document(overrides), encoding="utf-8")
    logs = work / ("logs" if not args.resume else f"logs-resume-{_attempt(work)}")
    n = deployment.supernodes
    fleet, control, appio, *node_ports = free_ports(3 + n + len(intruders))
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns apps by name
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "CERTFL_TORCH_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",
    }
    if args.data_dir:
        env["CERTFL_DATA"] = str(Path(args.data_dir).resolve())
    (home / "config.toml").write_text(
        tls.connection_toml("launch", f"127.0.0.1:{control}", security)
    )
    started = time.perf_counter()
    timed_out = threading.Event()
    refused = _RefusalReport(logs)

    def node_exited(name: str, code: int) -> None:
        if code == REFUSED_EXIT:
            refused.report(name)
        elif name.startswith("supernode"):
            print(f"[launch] {name} exited (code {code}); the rounds go on without it", flush=True)

    try:
        with signals_interrupt(), ProcessGroup(logs, env, on_exit=node_exited) as group:
            link = group.start("superlink", [
                str(bindir / "flower-superlink"), *tls.superlink_flags(security),
                "--fleet-api-address", f"127.0.0.1:{fleet}",
                "--control-api-address", f"127.0.0.1:{control}",
                "--host", "127.0.0.1", "--port", str(appio),
                "--database", str(work / "state.db"),
            ], stop_last=True)  # fmt: skip
            wait_for_port(fleet, link, timeout=60)
            wait_for_port(control, link, timeout=60)
            tls.register_launch_nodes(security, names, bindir, env)
            for i, (name, role) in enumerate(zip(names, deployment.roles, strict=True)):
                group.start(name, [
                    *tls.supernode_command(security, name, deployment.heartbeat_interval),
                    "--superlink", f"127.0.0.1:{fleet}",
                    "--host", "127.0.0.1", "--port", str(node_ports[i]),
                    "--node-config", f"partition-id={i} num-partitions={n} role='{role}'",
                ])  # fmt: skip
            tls.start_intruders(group, security, intruders, fleet, node_ports[n:])
            print(f"[launch] SuperLink on 127.0.0.1:{fleet} (gRPC{_security_words(security)}), "
                  f"{n} SuperNodes: {', '.join(deployment.roles)}; logs in {logs}",
                  flush=True)  # fmt: skip
            left = args.timeout - (time.perf_counter() - started)
            wait_for_nodes(group, env, n, min(NODES_ONLINE_TIMEOUT, left), intruder_names)
            argv = [str(bindir / "flwr"), "run", deployment.app, "launch", "--stream",
                    "--run-config", str(config_file)]  # fmt: skip
            runner = group.start("flwr-run", argv, stdout_to_log=False)

            def expire() -> None:
                timed_out.set()
                group.stop_all()

            remaining = max(1.0, args.timeout - (time.perf_counter() - started))
            watchdog = threading.Timer(remaining, expire)  # ends the stream on timeout
            watchdog.start()
            try:
                _relay(runner.stdout, logs / "flwr-run.log", args.verbose)
                runner.wait()
            finally:
                watchdog.cancel()
        refused.report_all(group)  # any refused after the group's last look
    except KeyboardInterrupt:
        print(f"[launch] interrupted: every process it started was stopped{_resume_hint(run_dir)}",
              flush=True)  # fmt: skip
        return 130
    except (RuntimeError, TimeoutError) as err:
        print(f"[launch] failed: {err}; every process it started was stopped", flush=True)
        return 1
    complete = (run_dir / "done").is_file()
    if complete:
        status = "complete"
    else:
        why = f"timed out after {args.timeout:g}s" if timed_out.is_set() else "see the logs"
        status = f"INCOMPLETE ({why}){_resume_hint(run_dir)}"
    print(f"[launch] run directory {run_dir}: {status}; "
          f"{time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip
    return 0 if complete else 1


def _security_words(sec: tls.Security) -> str:
    """How the SuperLink talks, for the launch line.

    >>> _security_words(tls.Security())
    ''
    """
    if not sec.tls:
        return ""
    return " with TLS and SuperNode auth" if sec.auth else " with TLS"


class _RefusalReport:
    """Prints, once per SuperNode, why the SuperLink refused it (the guard's line in its log)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.done: set[str] = set()
        self._lock = threading.Lock()

    def report(self, name: str) -> None:
        """Print why SuperNode `name` was refused, unless that was printed already."""
        with self._lock:
            if name in self.done:
                return
            self.done.add(name)
        reason = tls.refusal_reason(self.logs / f"{name}.log")
        print(f"[launch] {name} was refused: {reason}", flush=True)

    def report_all(self, group: ProcessGroup) -> None:
        """Report every process of `group` that exited with the guard's refusal code."""
        for name, proc in group.procs.items():
            if proc.poll() == REFUSED_EXIT:
                self.report(name)


def _resume_hint(run_dir: Path) -> str:
    """How to continue `run_dir`, when it has a resume point."""
    if (run_dir / RESUME_FILE).is_file():
        return f"; continue with: certfl launch --resume {run_dir}"
    return ""


def _attempt(work: Path) -> int:
    """The number of this resume: one more than the resume log directories already there."""
    return len(list(work.glob("logs-resume-*"))) + 1
