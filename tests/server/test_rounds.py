"""The round loop's waiting and reply collection, on a stand-in Grid (pure logic; the real
SuperLink is exercised by tests/cli/test_launch.py)."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from core.config import RunConfig
from core.models import InputSpec, build_model
from core.params import model_to_record
from core.wire import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES
from server.rounds import RoundLimits, exchange, play_round, wait_for_nodes
from strategies.replies import NO_REPLY
from strategies.robust import RobustStrategy

SPEC = InputSpec(1, 4, 4, 3, (0.5,), (0.25,))


class StubGrid:
    """Connected nodes that change over time, and per node how it answers: "train" (replies
    with the global model), "crash" (a client error), "lost" (the SuperLink answers
    NODE_UNAVAILABLE) or "silent" (no answer at all)."""

    def __init__(self, answers: dict[int, str], connected: list[list[int]] | None = None):
        self.answers = answers
        self.connected = connected or [sorted(answers)]
        self.looks = 0
        self.inbox: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        nodes = self.connected[min(self.looks, len(self.connected) - 1)]
        self.looks += 1
        return nodes

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"msg-{i}"
            ids.append(f"msg-{i}")
            kind = self.answers[msg.metadata.dst_node_id]
            if kind == "train":
                content = RecordDict(
                    {
                        ARRAYS: next(iter(msg.content.array_records.values()), ArrayRecord()),
                        METRICS: MetricRecord({NUM_EXAMPLES: 10}),
                    }
                )
                self.inbox[ids[-1]] = Message(content, reply_to=msg)
            elif kind == "crash":
                self.inbox[ids[-1]] = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                                    "boom"), reply_to=msg)  # fmt: skip
            elif kind == "lost":
                reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, "heartbeat"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                self.inbox[ids[-1]] = reply
        return ids

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        return [self.inbox.pop(i) for i in message_ids if i in self.inbox]


def _sent(node: int) -> Message:
    return Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type="train")


def test_exchange_answers_every_message_from_its_own_node() -> None:
    grid = StubGrid({1: "train", 2: "crash", 3: "lost", 4: "silent"})
    start = time.monotonic()
    replies = exchange(grid, [_sent(n) for n in (1, 2, 3, 4)], timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - start < 2.0
    assert [r.metadata.src_node_id for r in replies] == [1, 2, 3, 4]
    assert not replies[0].has_error()
    assert [r.error.code for r in replies[1:]] == [
        ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        ErrorCode.NODE_UNAVAILABLE,
        NO_REPLY,
    ]
    assert "train.round-timeout" in replies[3].error.reason


def test_wait_for_nodes_returns_once_enough_or_after_the_timeout() -> None:
    grid = StubGrid({1: "train", 2: "train"}, connected=[[1], [1], [1, 2]])
    assert wait_for_nodes(grid, needed=2, timeout_s=5.0, poll_s=0.01) == [1, 2]
    lonely = StubGrid({1: "train"}, connected=[[1]])
    start = time.monotonic()
    assert wait_for_nodes(lonely, needed=2, timeout_s=0.2, poll_s=0.05) == [1]
    assert 0.2 <= time.monotonic() - start < 2.0


def _strategy(**flat: object) -> tuple[RobustStrategy, ArrayRecord]:
    cfg = RunConfig.from_flat({"agg.rule": "mean", **flat})
    template = model_to_record(build_model("mlp", SPEC, seed=0))
    return RobustStrategy(cfg, template), template


def test_a_round_with_lost_and_silent_nodes_records_them_and_aggregates_the_rest() -> None:
    strategy, model = _strategy(**{"train.clients-per-round": 4})
    grid = StubGrid({1: "train", 2: "train", 3: "lost", 4: "silent"})
    limits = RoundLimits(min_nodes=2, min_nodes_timeout=1.0, round_timeout=0.2, poll_s=0.05)
    arrays, outcome = play_round(grid, strategy, 1, model, limits)
    report = outcome.report
    assert report.aggregated and report.accepted == 2
    assert (report.sampled, report.nodes, report.received) == (4, [1, 2, 3, 4], 2)
    reasons = {f.node_id: f.reason for f in report.failures}
    assert sorted(reasons) == [3, 4]
    assert reasons[3].startswith("node lost") and reasons[4].startswith("no reply")


def test_a_round_without_enough_nodes_is_skipped_after_the_wait() -> None:
    strategy, model = _strategy(**{"train.clients-per-round": 4})
    grid = StubGrid({1: "train"})
    limits = RoundLimits(min_nodes=3, min_nodes_timeout=0.2, round_timeout=5.0, poll_s=0.05)
    arrays, outcome = play_round(grid, strategy, 2, model, limits)
    report = outcome.report
    assert arrays is model and not report.aggregated and report.sampled == 0
    assert "1 of the 3 nodes needed (train.min-nodes)" in report.skip_reason
    assert report.wait_seconds >= 0.2


def test_fewer_nodes_than_clients_per_round_samples_all_connected() -> None:
    strategy, model = _strategy(**{"train.clients-per-round": 5})
    grid = StubGrid({7: "train", 9: "train"})
    limits = RoundLimits(min_nodes=1, min_nodes_timeout=1.0, round_timeout=1.0, poll_s=0.05)
    report = play_round(grid, strategy, 1, model, limits)[1].report
    assert report.nodes == [7, 9] and report.accepted == 2 and report.aggregated
