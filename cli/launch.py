"""`certfl launch`: a real deployment on this machine, one SuperLink and N SuperNodes over gRPC.

Starts `flower-superlink` (Fleet API over gRPC on loopback), N `flower-supernode` processes each
with its node config (partition-id, num-partitions, role), submits the app with `flwr run`,
streams the server's per-round lines, and stops every process it started, also on Ctrl-C, on
SIGTERM and on failure. The run directory is the same as in simulation.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from cli import tls
from cli.processes import ProcessGroup, free_ports, wait_for_port
from core.roles import BENIGN, validate_role


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
        help="run config overrides, as for `flwr run` (repeatable)",
    )  # fmt: skip
    p.add_argument("--output-dir", default="runs", help="where the run directory is created")
    p.add_argument("--run-name", default="", help="run directory name (default: a timestamp)")
    p.add_argument("--data-dir", default="", help="sets CERTFL_DATA for every process")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
    p.add_argument("--threads", type=int, default=1, help="torch threads per ClientApp process")
    p.add_argument("-v", "--verbose", action="store_true", help="stream every Flower log line")
    tls.add_launch_arguments(p)  # --tls, --auth, --credentials, --intruders


def node_roles(spec: str, n: int) -> list[str]:
    """The role of each of the `n` SuperNodes from a comma-separated list, padded with benign."""
    roles = [r.strip() for r in spec.split(",") if r.strip()] if spec else []
    if len(roles) > n:
        raise SystemExit(f"--roles names {len(roles)} roles for {n} SuperNodes")
    return [validate_role(r) for r in roles] + [BENIGN] * (n - len(roles))


def _relay(stream, log_file: Path, verbose: bool) -> None:
    """Copy `flwr run --stream` output to a log file; echo certfl lines, warnings and errors."""
    with log_file.open("w", encoding="utf-8") as log:
        for raw in stream:
            line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            log.write(line)
            log.flush()
            if verbose or any(tag in line for tag in ("[certfl]", "WARNING", "ERROR")):
                sys.stdout.write(line)
                sys.stdout.flush()


class _FirstSignalInterrupts:
    """Signal handler: the first SIGINT/SIGTERM interrupts; later ones are ignored while the
    launcher stops its processes (a second Ctrl-C must not abort the clean-up)."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    """Start the deployment, run the app, stop everything; 0 when the run directory is complete."""
    n = args.supernodes
    if n < 1:
        raise SystemExit("--supernodes must be >= 1")
    roles = node_roles(args.roles, n)
    app = Path(args.app).resolve()
    run_name = args.run_name or datetime.now(UTC).strftime("launch-%Y%m%d-%H%M%S")
    run_dir = Path(args.output_dir).resolve() / run_name
    work = run_dir.parent / f".{run_name}.launch"
    security = tls.launch_security(args, work, n)
    intruders = tls.parse_intruders(args.intruders)
    fleet, control, appio, *node_ports = free_ports(3 + n + len(intruders))
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns apps by name
        "FLWR_HOME": str(work / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "CERTFL_TORCH_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",
    }
    if args.data_dir:
        env["CERTFL_DATA"] = str(Path(args.data_dir).resolve())
    (work / "flwr-home").mkdir(parents=True, exist_ok=True)
    connection = tls.connection_toml("launch", f"127.0.0.1:{control}", security)
    (work / "flwr-home" / "config.toml").write_text(connection)
    interrupt = _FirstSignalInterrupts()
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    try:
        with ProcessGroup(work / "logs", env) as group:
            link = group.start("superlink", [
                str(bindir / "flower-superlink"), *tls.superlink_flags(security),
                "--fleet-api-address", f"127.0.0.1:{fleet}",
                "--control-api-address", f"127.0.0.1:{control}",
                "--host", "127.0.0.1", "--port", str(appio),
            ])  # fmt: skip
            wait_for_port(fleet, link, timeout=60)
            wait_for_port(control, link, timeout=60)
            names = [f"supernode-{i}" for i in range(n)]
            tls.register_launch_nodes(security, names, bindir, env)
            watch = tls.SupernodeWatch(group, work / "logs")
            for i, (role, port) in enumerate(zip(roles, node_ports, strict=False)):
                group.start(names[i], [
                    *tls.supernode_command(bindir, security, names[i]),
                    "--superlink", f"127.0.0.1:{fleet}",
                    "--host", "127.0.0.1", "--port", str(port),
                    "--node-config", f"partition-id={i} num-partitions={n} role='{role}'",
                ])  # fmt: skip
            extra = tls.start_intruders(
                group, security, args.intruders, fleet, node_ports[n:], bindir
            )
            watch.watch(names + extra)
            print(f"[launch] SuperLink on 127.0.0.1:{fleet} (gRPC), {n} SuperNodes: "
                  f"{', '.join(roles)}; logs in {work / 'logs'}", flush=True)  # fmt: skip
            overrides = [
                *args.run_config,
                f"output-dir='{run_dir.parent}' run-name='{run_name}' train.min-nodes={n}",
            ]
            argv = [str(bindir / "flwr"), "run", str(app), "launch", "--stream"]
            for o in overrides:
                argv += ["--run-config", o]
            runner = group.start("flwr-run", argv, stdout_to_log=False)
            remaining = max(1.0, args.timeout - (time.perf_counter() - started))
            watchdog = threading.Timer(remaining, group.stop_all)  # ends the stream on timeout
            watchdog.start()
            try:
                _relay(runner.stdout, work / "logs" / "flwr-run.log", args.verbose)
                runner.wait()
            finally:
                watchdog.cancel()
                watch.stop()  # SuperNodes leave first, with SIGTERM, while the SuperLink runs
    except KeyboardInterrupt:
        print("[launch] interrupted: every process it started was stopped", flush=True)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    complete = (run_dir / "done").is_file()
    status = "complete" if complete else "INCOMPLETE (see the logs)"
    print(f"[launch] run directory {run_dir}: {status}; "
          f"{time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip
    return 0 if complete else 1
