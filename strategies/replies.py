"""Turn the clients' training replies into a checked `(K, P)` tensor, rejecting bad ones one by one.

Flower's own strategies validate a round's replies as a whole, so one malformed reply aborts the
round. Here each reply is checked on its own against the global model's layout: an error reply,
a missing or extra array, a wrong shape or dtype, a non-finite value or a bad example count is a
`Failure` with its reason, and the remaining replies are aggregated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from core.params import InvalidReply, Layout, flatten_checked

NUM_EXAMPLES = "num-examples"


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
            failures.append(Failure(node, f"client error: {msg.error.reason}"))
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
