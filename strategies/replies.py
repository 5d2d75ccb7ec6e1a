"""Turn the clients' training replies into a checked `(K, P)` tensor, rejecting bad ones one by one.

Flower's own strategies validate a round's replies as a whole, so one malformed reply aborts the
round. Here each reply is checked on its own against the global model's layout: an error reply,
a missing or extra array, a wrong shape or dtype, a non-finite value or a bad example count is a
`Failure` with its reason, and the remaining replies are aggregated. A node that never answers
is a failure too: the SuperLink answers for a node whose heartbeat expired (NODE_UNAVAILABLE),
and the server's round loop answers for one that missed the round deadline (`NO_REPLY`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode

from core.params import InvalidReply, Layout, flatten_checked
from core.wire import NUM_EXAMPLES

NO_REPLY = 1000  # error code of the stand-in reply for a node that missed the round deadline
# replies that never came from the node: it was lost, not wrong
LOST = {
    ErrorCode.NODE_UNAVAILABLE: "node lost (its heartbeat expired)",
    ErrorCode.MESSAGE_UNAVAILABLE: "node lost (message unavailable)",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "node lost (reply unavailable)",
    NO_REPLY: "no reply within the round deadline",
}


def is_lost(msg: Message) -> bool:
    """Whether `msg` stands in for a reply its node never sent."""
    return msg.has_error() and msg.error.code in LOST


def error_reason(msg: Message) -> str:
    """Why an error reply is a failure: the node was lost, or the client reported an error."""
    if is_lost(msg):
        return f"{LOST[msg.error.code]}: {msg.error.reason}"
    return f"client error: {msg.error.reason}"


@dataclass(frozen=True)
class Failure:
    """A reply that was not aggregated, and why."""

    node_id: int
    reason: str


@dataclass(frozen=True)
class CheckedReplies:
    """The accepted replies as one tensor, their reported example counts and metrics."""

    node_ids: list[int]
    models: torch.Tensor  # (K, P) float32 flat client models
    num_examples: torch.Tensor  # (K,) float64, as reported by the clients (untrusted)
    metrics: list[MetricRecord]
    failures: list[Failure]

    @property
    def count(self) -> int:
        """Number of accepted replies."""
        return len(self.node_ids)


def _single(records: dict, what: str) -> object:
    """The one record of a kind in a reply; InvalidReply if there are none or several."""
    if len(records) != 1:
        raise InvalidReply(f"expected exactly one {what}, got {len(records)}")
    return next(iter(records.values()))


def _num_examples(metrics: MetricRecord) -> float:
    """The reply's reported example count, which must be a finite positive number."""
    if NUM_EXAMPLES not in metrics:
        raise InvalidReply(f"metrics lack {NUM_EXAMPLES!r}")
    value = metrics[NUM_EXAMPLES]
    if isinstance(value, list) or not math.isfinite(float(value)) or float(value) <= 0:
        raise InvalidReply(f"{NUM_EXAMPLES!r} = {value!r} is not a finite positive number")
    return float(value)


def check_replies(replies: Iterable[Message], layout: Layout) -> CheckedReplies:
    """Validate every reply against `layout`; good ones are stacked, bad ones become failures."""
    node_ids: list[int] = []
    rows: list[torch.Tensor] = []
    counts: list[float] = []
    metrics: list[MetricRecord] = []
    failures: list[Failure] = []
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            failures.append(Failure(node, error_reason(msg)))
            continue
        try:
            content = msg.content
            record = _single(dict(content.array_records), "ArrayRecord")
            metric = _single(dict(content.metric_records), "MetricRecord")
            assert isinstance(record, ArrayRecord) and isinstance(metric, MetricRecord)
            count = _num_examples(metric)
            row = flatten_checked(record, layout)
        except InvalidReply as err:
            failures.append(Failure(node, f"invalid reply: {err}"))
            continue
        node_ids.append(node)
        rows.append(row)
        counts.append(count)
        metrics.append(metric)
    models = torch.stack(rows) if rows else torch.empty(0, layout.size)
    return CheckedReplies(
        node_ids, models, torch.tensor(counts, dtype=torch.float64), metrics, failures
    )


def canonical_order(checked: CheckedReplies) -> CheckedReplies:
    """The same replies sorted by the SHA-256 of their model bytes (then example count).

    Node ids are random per SuperNode connection and arrival order varies, so neither may fix
    the order in which float sums run: sorted by content, the same set of replies aggregates to
    the same bits in every run, also when restarted nodes come back under new ids.
    """
    keys = [
        (hashlib.sha256(row.numpy().tobytes()).hexdigest(), float(n))
        for row, n in zip(checked.models, checked.num_examples, strict=True)
    ]
    order = sorted(range(checked.count), key=keys.__getitem__)
    return CheckedReplies(
        [checked.node_ids[i] for i in order],
        checked.models[order] if order else checked.models,
        checked.num_examples[order] if order else checked.num_examples,
        [checked.metrics[i] for i in order],
        checked.failures,
    )
