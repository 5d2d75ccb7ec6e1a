"""`python -m cli.supernode`: the heartbeat interval the SuperNode declares and keeps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.supernode import set_heartbeat_interval

PROBE = """
from cli.supernode import set_heartbeat_interval
set_heartbeat_interval(12)
import flwr.client.grpc_rere_client.connection as connection
import flwr.supercore.heartbeat as heartbeat
print(connection.HEARTBEAT_DEFAULT_INTERVAL, heartbeat.HEARTBEAT_DEFAULT_INTERVAL)
"""


def test_the_interval_reaches_both_readers() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["12", "12"]


@pytest.mark.parametrize("seconds", [5, 1801])
def test_an_interval_the_superlink_refuses_is_refused_here(seconds: float) -> None:
    with pytest.raises(ValueError, match="10..1800"):
        set_heartbeat_interval(seconds)
