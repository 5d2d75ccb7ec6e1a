"""The `certfl` command: what `flwr` itself does not do."""

from __future__ import annotations

import argparse

from cli import certify_cmd, crfl_certify, experiment, launch, run_report, simulation


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
    }
    for module in commands.values():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return commands[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
