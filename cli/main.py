"""The `certfl` command: what `flwr` itself does not do."""

from __future__ import annotations

import argparse

from attacks.registry import load_policies
from cli import (
    certify_cmd,
    compose,
    credentials,
    crfl_certify,
    experiment,
    launch,
    register_keys,
    run_report,
    simulation,
)


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(prog="certfl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "launch": launch,
        "simulate": simulation,
        "certify": certify_cmd,
        "crfl-certify": crfl_certify,
        "experiment": experiment,
        "report": run_report,
        "credentials": credentials,
        "register-keys": register_keys,
        "compose": compose,
    }
    for module in commands.values():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    load_policies()  # the policies' names and `attack.*` keys, before any config is parsed
    return commands[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
