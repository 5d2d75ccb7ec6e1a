"""`python -m cli.healthcheck --health HOST:PORT [--tcp HOST:PORT ...]`: a container health check.

Exit 0 when Flower's gRPC health service (`--health-server-address` of flower-superlink,
flower-supernode and flower-superexec) answers SERVING and every `--tcp` address accepts a
connection (e.g. the SuperLink's Fleet and Control APIs); else exit 1 with the reason on stderr.
Light on purpose (grpc only, no torch): docker runs it every few seconds.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence


def grpc_serving(address: str, timeout: float) -> str | None:
    """None when the gRPC health service at `address` reports SERVING, else the reason."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as err:
            return f"health service at {address}: {err.code().name}"
    status = health_pb2.HealthCheckResponse
    if reply.status != status.SERVING:
        return f"health service at {address}: {status.ServingStatus.Name(reply.status)}"
    return None


def tcp_open(address: str, timeout: float) -> str | None:
    """None when `address` (host:port) accepts a TCP connection, else the reason."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as err:
        return f"{address}: {err}"


def main(argv: Sequence[str] | None = None) -> int:
    """Check every address given; print the first failure."""
    p = argparse.ArgumentParser(prog="python -m cli.healthcheck", description=__doc__)
    p.add_argument("--health", action="append", default=[], help="a gRPC health service")
    p.add_argument("--tcp", action="append", default=[], help="a TCP address that must accept")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per check")
    args = p.parse_args(argv)
    checks = [(grpc_serving, a) for a in args.health] + [(tcp_open, a) for a in args.tcp]
    for check, address in checks:
        problem = check(address, args.timeout)
        if problem is not None:
            print(f"unhealthy: {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
