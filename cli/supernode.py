"""`python -m cli.supernode --heartbeat-interval S <flower-supernode arguments>`: a Flower
SuperNode that declares a heartbeat interval of S seconds instead of Flower's fixed 30.

The SuperLink marks a node offline once HEARTBEAT_PATIENCE (2) x the interval the node declared
has passed without a heartbeat; only then does it answer the messages sent to that node with
NODE_UNAVAILABLE and drop it from the connected nodes. The Fleet API takes any interval in
[HEARTBEAT_MIN_INTERVAL, HEARTBEAT_MAX_INTERVAL] = [10, 1800] s from the node, but Flower 1.36's
`flower-supernode` has no option for it: the interval is the constant HEARTBEAT_DEFAULT_INTERVAL,
read by the Fleet connection (what the node declares) and by the heartbeat sender (how often it
sends). This sets both before the SuperNode starts, so a lost node is noticed after 2 S seconds.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from flwr.common import constant

# The two modules that read the interval, each through its own `from ... import` of the constant.
_READERS = ("flwr.client.grpc_rere_client.connection", "flwr.supercore.heartbeat")


def set_heartbeat_interval(seconds: float) -> None:
    """Make this process's SuperNode declare and keep a heartbeat interval of `seconds`."""
    low, high = constant.HEARTBEAT_MIN_INTERVAL, constant.HEARTBEAT_MAX_INTERVAL
    if not low <= seconds <= high:
        raise ValueError(f"heartbeat interval {seconds:g}s: the SuperLink accepts {low}..{high}")
    for name in _READERS:
        module = importlib.import_module(name)
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):  # a Flower that reads it elsewhere
            raise RuntimeError(f"{name} no longer reads HEARTBEAT_DEFAULT_INTERVAL")
        module.HEARTBEAT_DEFAULT_INTERVAL = seconds


def main(argv: list[str] | None = None) -> None:
    """Set the heartbeat interval, then run `flower-supernode` with the remaining arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m cli.supernode", description=__doc__, allow_abbrev=False, add_help=False
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=constant.HEARTBEAT_DEFAULT_INTERVAL
    )
    args, rest = parser.parse_known_args(argv)
    set_heartbeat_interval(args.heartbeat_interval)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
