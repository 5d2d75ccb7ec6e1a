"""A node with a bad role or node config trains nothing and answers with an error that names the
key, the value and what is allowed; the server records it as that node's failure."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.config import flatten_dict

from client.app import train
from core.params import Layout
from core.wire import CONFIG, SERVER_ROUND
from strategies.replies import Failure, check_replies
from tests.conftest import REPO


def _defaults() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return flatten_dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def _train(node_config: dict) -> Message:
    sent = Message(RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: 1})}), dst_node_id=42,
                   message_type="train")  # fmt: skip
    context = Context(run_id=1, node_id=42, node_config=node_config, state=RecordDict(),
                      run_config=_defaults())  # fmt: skip
    return train(sent, context)


@pytest.mark.parametrize(
    ("node_config", "fragments"),
    [
        (
            {"partition-id": 0, "num-partitions": 4, "role": "attack:evil"},
            ["'role'", "'attack:evil'", "attack:distillation", "benign", "fl-wbc"],
        ),
        ({"partition-id": 0, "num-partitions": 4, "role": "evil"}, ["'evil'", "allowed"]),
        ({"partition-id": 4, "num-partitions": 4}, ["'partition-id'", "4", "num-partitions"]),
        ({"partition-id": 0, "num-partitions": 0}, ["'num-partitions'", "0"]),
    ],
)
def test_a_bad_node_replies_with_an_error_naming_what_is_allowed(
    node_config: dict, fragments: list[str]
) -> None:
    reply = _train(node_config)
    assert reply.has_error()
    for fragment in fragments:
        assert fragment in reply.error.reason
    [failure] = check_replies([reply], Layout.of({"w": np.zeros(2, np.float32)})).failures
    assert failure == Failure(42, f"client error: {reply.error.reason}")
