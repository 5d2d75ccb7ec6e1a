"""The round loop: certfl drives the rounds itself instead of Flower's `Strategy.start`.

`Strategy.start` always begins at round 1 (no resume), waits in `send_and_receive` without saying
which node never answered, and leaves waiting for nodes to the strategy. Here each round
1. waits at most `min_nodes_timeout` for `min_nodes` connected nodes; with fewer the round is
   skipped and recorded, and the global model stays;
2. lets the strategy sample from the nodes connected now and build its messages;
3. pushes them and pulls replies until every message has one or `round_timeout` has passed.
   A node that never answers gets a stand-in error reply (`NO_REPLY`), and the SuperLink's own
   error reply for a node whose heartbeat expired (NODE_UNAVAILABLE, sent from the SuperLink's
   id) is attributed to the node it was meant for, so both are failures of that node;
4. lets the strategy aggregate, and hands the round's model and report to `record`.

How Flower shows a dead SuperNode: it stays in `get_node_ids()` until its heartbeat expires
(HEARTBEAT_PATIENCE x the interval it declared: 2 x 30 s by default), after which the SuperLink
answers every message to it with NODE_UNAVAILABLE and leaves it out of `get_node_ids()`. A
SuperNode that restarts registers anew and is sampled from the next round on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies.gate import CertificationGate, GateReport
from strategies.replies import NO_REPLY
from strategies.robust import RoundReport


@dataclass(frozen=True)
class RoundOutcome:
    """What one round did: the robust strategy's report and, under a gate, the gate's."""

    report: RoundReport
    gate: GateReport | None = None  # None without a gate, or when no candidate came out

    @property
    def changed(self) -> bool:
        """Whether the round produced a new global model (aggregated and not gated out)."""
        return self.report.aggregated and (self.gate is None or self.gate.accepted)


RecordFn = Callable[[int, ArrayRecord, RoundOutcome], None]


@dataclass(frozen=True)
class RoundLimits:
    """How long a round waits, and for what.

    Parameters
    ----------
    min_nodes : int
        Fewest connected nodes a round runs with.
    min_nodes_timeout : float
        Seconds to wait for `min_nodes` before the round is skipped.
    round_timeout : float
        Seconds from sending the model to the last reply; later replies are failures.
    poll_s : float
        Seconds between two looks at the connected nodes or the replies.
    """

    min_nodes: int
    min_nodes_timeout: float
    round_timeout: float
    poll_s: float = 0.5


def wait_for_nodes(grid: Grid, needed: int, timeout_s: float, poll_s: float) -> list[int]:
    """The ids of the connected nodes once at least `needed` are, or after `timeout_s` seconds
    whatever is connected then (maybe fewer)."""
    deadline = time.monotonic() + timeout_s
    nodes = sorted(grid.get_node_ids())
    if len(nodes) < needed:
        log(INFO, "[certfl] waiting up to %.0fs for nodes: %d of %d connected",
            timeout_s, len(nodes), needed)  # fmt: skip
    while len(nodes) < needed and time.monotonic() < deadline:
        time.sleep(poll_s)
        nodes = sorted(grid.get_node_ids())
    return nodes


def exchange(
    grid: Grid, messages: Iterable[Message], timeout_s: float, poll_s: float
) -> list[Message]:
    """Send `messages` and return exactly one reply per message, each from its destination.

    Replies that are in when `timeout_s` runs out are returned as they are; every other message
    gets an error reply with code `NO_REPLY`. An error reply that the SuperLink sent on a node's
    behalf is re-addressed as coming from that node.
    """
    sent = list(messages)
    if not sent:
        return []
    pushed = set(grid.push_messages(sent)) - {None, ""}
    by_id = {msg.metadata.message_id: msg for msg in sent}
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + timeout_s
    waiting = {i for i in pushed if i in by_id}
    while waiting:
        for reply in grid.pull_messages(list(waiting)):
            msg_id = reply.metadata.reply_to_message_id
            if msg_id in waiting:
                replies[msg_id] = _from_destination(reply, by_id[msg_id])
                waiting.discard(msg_id)
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    out = []
    for msg in sent:
        msg_id = msg.metadata.message_id
        if msg_id in replies:
            out.append(replies[msg_id])
        else:
            what = f"within {timeout_s:g}s (train.round-timeout)" if msg_id in pushed else "sent"
            out.append(Message(Error(code=NO_REPLY, reason=f"no reply {what}"), reply_to=msg))
    return out


def _from_destination(reply: Message, sent: Message) -> Message:
    """`reply` as coming from the node `sent` went to (the SuperLink answers for lost nodes)."""
    if reply.metadata.src_node_id == sent.metadata.dst_node_id or not reply.has_error():
        return reply
    return Message(reply.error, reply_to=sent)


def play_round(
    grid: Grid, strategy, server_round: int, arrays: ArrayRecord, limits: RoundLimits
) -> tuple[ArrayRecord, RoundOutcome]:
    """One round: wait for nodes, sample, send, collect, aggregate. Returns the global model
    after the round (the same one when it was skipped) and what the round did."""
    start = time.perf_counter()
    nodes = wait_for_nodes(grid, limits.min_nodes, limits.min_nodes_timeout, limits.poll_s)
    waited = time.perf_counter() - start
    if len(nodes) < limits.min_nodes:
        reason = (
            f"{len(nodes)} of the {limits.min_nodes} nodes needed (train.min-nodes) connected "
            f"after {limits.min_nodes_timeout:g}s (train.min-nodes-timeout)"
        )
        log(WARNING, "[certfl] round %d skipped: %s", server_round, reason)
        report = RoundReport(round=server_round, skip_reason=reason, wait_seconds=waited)
        return arrays, RoundOutcome(report)
    messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
    replies = exchange(grid, messages, limits.round_timeout, limits.poll_s)
    candidate, _ = strategy.aggregate_train(server_round, replies)
    gated = isinstance(strategy, CertificationGate)
    robust = strategy.inner if gated else strategy
    report = replace(robust.last_report, wait_seconds=waited)
    outcome = RoundOutcome(report, strategy.last_report if gated else None)
    return (arrays if candidate is None else candidate), outcome


def run_rounds(
    grid: Grid,
    strategy,
    arrays: ArrayRecord,
    rounds: range,
    limits: RoundLimits,
    record: RecordFn,
) -> ArrayRecord:
    """Play `rounds` in order starting from the global model `arrays`; after each, `record`
    gets the round number, the global model and the round's outcome. Returns the final global
    model.

    `strategy` is a RobustStrategy, or a CertificationGate around one: Flower's
    `configure_train` and `aggregate_train`; the robust strategy's `last_report` and the gate's
    `last_report` are the round's frozen reports.
    """
    for server_round in rounds:
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", server_round, rounds.stop - 1)
        arrays, outcome = play_round(grid, strategy, server_round, arrays, limits)
        record(server_round, arrays, outcome)
    return arrays
