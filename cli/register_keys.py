"""`certfl register-keys KEY.pub ... [--superlink CONNECTION]`: allow SuperNodes to join.

Registers each SuperNode public key with the SuperLink through its Control API, exactly as
`flwr supernode register KEY.pub CONNECTION` does (the connection comes from
`$FLWR_HOME/config.toml`), but a key that is already registered counts as success, so the
command can run every time a deployment starts (the compose overlay's `register` service).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from cli.tls import register_keys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl register-keys`."""
    _arguments(
        subparsers.add_parser(
            "register-keys", help="register SuperNode public keys with a SuperLink (idempotent)"
        )
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("keys", nargs="+", help="public keys in OpenSSH format (NAME.pub)")
    p.add_argument(
        "--superlink", default="",
        help="the [superlink.<name>] connection in $FLWR_HOME/config.toml (default: its default)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Register every key; fail on the first that the SuperLink does not take."""
    missing = [k for k in args.keys if not Path(k).is_file()]
    if missing:
        raise SystemExit(f"no such public key file: {', '.join(missing)}")
    flwr = shutil.which("flwr") or "flwr"
    try:
        lines = register_keys([flwr], [Path(k) for k in args.keys], args.superlink, os.environ)
    except RuntimeError as err:
        raise SystemExit(f"certfl register-keys: {err}") from None
    for line in lines:
        print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m cli.register_keys`: the same command without importing certfl's others."""
    p = argparse.ArgumentParser(prog="python -m cli.register_keys", description=__doc__)
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
