"""`certfl simulate`: a Flower simulation (`flwr run`) in a private Flower home, and no process
left behind.

`flwr run` against Flower's local address starts a detached SuperLink that outlives it (and its
SuperExec and simulation processes with it). Here the project starts that SuperLink itself, the
way Flower would (`flower-superlink --simulation`, in-memory state), on free ports, in one
`ProcessGroup` with the `flwr run` that uses it: every process of the run is stopped at the end,
on failure, on Ctrl-C or SIGTERM, and on timeout. Run-config overrides, however many, are merged
into one TOML file (cli/run_config.py) so that none is lost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from cli.processes import ProcessGroup, free_ports, signals_interrupt, wait_for_port
from cli.run_config import merge_overrides, resolve, write_overrides
from core.config import ConfigError

CONNECTION = "certfl-sim"


def simulation_env(flwr_home: Path) -> dict[str, str]:
    """The environment of a private simulation: its own Flower home, our PATH, and one torch
    thread per ClientApp (several share the cores)."""
    bindir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns by name
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "CERTFL_TORCH_THREADS": os.environ.get("CERTFL_TORCH_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }


def run_simulation(
    app: Path,
    run_config: str | Sequence[str],
    supernodes: int,
    flwr_home: Path,
    timeout: float = 3600,
    concurrent: int = 5,
    on_line: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess:
    """`flwr run APP --stream` with `supernodes` virtual clients, `concurrent` of them running
    at once (at least the colluders of a round, who wait for each other); Flower's output in
    `.stdout`, also handed line by line to `on_line` as it comes (an echo, a log, progress).
    `run_config`: one override string or several, merged key by key. Raises
    subprocess.TimeoutExpired after `timeout` seconds, once every process is stopped."""
    strings = [run_config] if isinstance(run_config, str) else list(run_config)
    flwr_home.mkdir(parents=True, exist_ok=True)
    config_file = flwr_home / "run-config.toml"
    write_overrides(strings, config_file)
    control, runtime = free_ports(2)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{control}"\ninsecure = true\n'
    )
    bindir = Path(sys.executable).parent
    argv = [str(bindir / "flwr"), "run", str(app), CONNECTION, "--stream",
            "--federation-config", f"num-supernodes={supernodes} client-resources-num-cpus=1 "
            f"init-args-num-cpus={concurrent}", "--run-config", str(config_file)]  # fmt: skip
    lines: list[str] = []
    timed_out = threading.Event()
    with ProcessGroup(flwr_home / "logs", simulation_env(flwr_home)) as group:
        link = group.start("superlink", [
            str(bindir / "flower-superlink"), "--insecure", "--simulation",
            "--isolation", "subprocess", "--control-api-address", f"127.0.0.1:{control}",
            "--host", "127.0.0.1", "--port", str(runtime),
        ], stop_last=True)  # fmt: skip
        wait_for_port(control, link, timeout=60)
        runner = group.start("flwr-run", argv, stdout_to_log=False)

        def expire() -> None:
            timed_out.set()
            group.stop_all()

        watchdog = threading.Timer(timeout, expire)
        watchdog.start()
        try:
            for raw in runner.stdout:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                if on_line is not None:
                    on_line(line)
            runner.wait()
        finally:
            watchdog.cancel()
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(argv, timeout, output="".join(lines))
    return subprocess.CompletedProcess(argv, runner.returncode, stdout="".join(lines))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl simulate`."""
    p = subparsers.add_parser("simulate", help="run the app as a Flower simulation (flwr run)")
    p.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    p.add_argument("-n", "--supernodes", type=int, default=10, help="number of virtual clients")
    p.add_argument("--concurrent", type=int, default=5, help="ClientApps running at once")
    p.add_argument(
        "-c", "--run-config", action="append", default=[],
        help="run config overrides 'k=v ...' or a .toml file (repeatable; merged key by key)",
    )  # fmt: skip
    p.add_argument("--flwr-home", default="", help="Flower home (default: a temporary one)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")


def _echo(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Validate the run config, simulate, stop everything; Flower's exit code."""
    app = Path(args.app).resolve()
    try:
        resolve(app, merge_overrides(args.run_config))
    except ConfigError as err:
        print(f"[simulate] bad run config, nothing started: {err}", flush=True)
        return 2
    with tempfile.TemporaryDirectory(prefix="certfl-flwr-") as tmp:
        home = Path(args.flwr_home).resolve() if args.flwr_home else Path(tmp)
        try:
            with signals_interrupt():
                proc = run_simulation(app, args.run_config, args.supernodes, home,
                                      args.timeout, args.concurrent, on_line=_echo)  # fmt: skip
        except KeyboardInterrupt:
            print("[simulate] interrupted: every process it started was stopped", flush=True)
            return 130
        except subprocess.TimeoutExpired:
            print(f"[simulate] timed out after {args.timeout:g}s: every process it started "
                  "was stopped", flush=True)  # fmt: skip
            return 124
    return proc.returncode
