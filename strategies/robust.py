"""The Flower adapter around the pure aggregation rules: one strategy, parameterised by the rule.

Each round it samples `train.clients-per-round` nodes with a seeded generator, checks every reply
on its own (strategies/replies.py), turns the accepted client models into updates against the
global model, applies the configured rule (strategies/aggregators.py) and returns global + update.
A round with fewer valid replies than the rule needs returns no model, so Flower keeps the global
model unchanged. What happened in the round is kept in `last_report` for the server's run store.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from core.config import AggregationConfig, ConfigError, RunConfig
from core.params import Layout, flatten_record, record_to_numpy, unflatten_to_record
from core.privacy import central_noise_std, clip_rows, noise
from core.seeds import derive_seed, torch_generator
from strategies.aggregators import RULES, check_precondition
from strategies.replies import CheckedReplies, Failure, check_replies


@dataclass
class RoundReport:
    """What the strategy saw and did in one round (the defender's view only)."""

    round: int
    sampled: int = 0
    received: int = 0
    failures: list[Failure] = field(default_factory=list)
    aggregated: bool = False
    skip_reason: str = ""
    train_seconds: float = 0.0  # from sending the model to having all replies
    aggregate_seconds: float = 0.0
    client_metrics: dict[str, float] = field(default_factory=dict)
    gate: dict | None = None  # the certification gate's decision, when a gate wraps the strategy


def client_weights(counts: torch.Tensor, cfg: AggregationConfig) -> torch.Tensor:
    """Aggregation weights from the clients' reported example counts, which are untrusted.

    `uniform` ignores them. `num-examples` caps each at `weight-cap` times the median count, so
    one client claiming a huge data set cannot dominate a weighted rule.
    """
    if cfg.weighting == "uniform" or len(counts) == 0:
        return torch.ones(len(counts), dtype=torch.float32)
    cap = cfg.weight_cap * float(counts.quantile(0.5))
    return counts.clamp(max=cap).to(torch.float32)


def mean_client_metrics(checked: CheckedReplies) -> dict[str, float]:
    """Unweighted mean of each scalar metric the accepted replies report (for the logs only)."""
    keys = set.intersection(*(set(m) for m in checked.metrics)) if checked.metrics else set()
    out = {}
    for key in sorted(keys):
        values = [m[key] for m in checked.metrics]
        if all(isinstance(v, int | float) for v in values):
            out[key] = float(np.mean(values))
    return out


class RobustStrategy(FedAvg):
    """FedAvg's message flow with seeded sampling, per-reply validation and a robust rule.

    Parameters
    ----------
    cfg : RunConfig
        `train.clients-per-round`, `train.min-nodes` and the `agg.*` section are used.
    template : ArrayRecord
        The initial global model; fixes the layout every reply must match.
    """

    def __init__(self, cfg: RunConfig, template: ArrayRecord) -> None:
        k = cfg.train.clients_per_round
        try:
            check_precondition(cfg.agg.rule, k, cfg.agg)
        except ValueError as err:
            raise ConfigError(
                f"run config key 'agg.rule' = {cfg.agg.rule!r} with "
                f"train.clients-per-round = {k}: {err}"
            ) from None
        super().__init__(
            fraction_train=1.0,  # unused: configure_train samples exactly k nodes itself
            fraction_evaluate=0.0,  # the server evaluates centrally
            min_train_nodes=k,
            min_available_nodes=cfg.train.min_nodes,
        )
        self.cfg = cfg
        self.rule = RULES[cfg.agg.rule]
        self.layout = Layout.of(record_to_numpy(template))
        self.last_report = RoundReport(round=0)
        self._global: torch.Tensor | None = None
        self._template = template
        self._sent_at = 0.0

    def summary(self) -> None:
        """Log the rule and sampling in place of FedAvg's fraction-based summary."""
        a = self.cfg.agg
        log(
            INFO,
            "\t├──> rule %s (f=%d, beta=%.2f, m=%d, tau=%g, noise-std=%g, weighting=%s)",
            a.rule, a.f, a.beta, a.m, a.tau, a.noise_std, a.weighting,
        )  # fmt: skip
        log(
            INFO,
            "\t└──> %d clients per round, waiting for %d nodes",
            self.min_train_nodes,
            self.min_available_nodes,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes with the run's seed and send them the global model."""
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            log(INFO, "waiting for nodes: %d of %d connected", len(nodes), self.min_available_nodes)
            time.sleep(1.0)
        k = min(self.min_train_nodes, len(nodes))
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "sample", server_round))
        chosen = [nodes[i] for i in rng.choice(len(nodes), size=k, replace=False)]
        self.begin_round(server_round, arrays, sampled=k)
        config["server-round"] = server_round
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(content, chosen, MessageType.TRAIN)

    def begin_round(self, server_round: int, arrays: ArrayRecord, sampled: int) -> None:
        """Remember the global model the sampled clients start from, and reset the report."""
        self._global = flatten_record(arrays, self.layout)
        self._template = arrays
        self.last_report = RoundReport(round=server_round, sampled=sampled)
        self._sent_at = time.perf_counter()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the valid replies with the rule; None (round skipped) if too few."""
        report = self.last_report
        report.train_seconds = time.perf_counter() - self._sent_at
        # arrival order varies between runs; a fixed order keeps the float sums reproducible
        replies = sorted(replies, key=lambda msg: msg.metadata.src_node_id)
        report.received = len(replies)
        checked = check_replies(replies, self.layout)
        report.failures = checked.failures
        for failure in checked.failures:
            log(WARNING, "round %d: rejected reply of node %d: %s", server_round,
                failure.node_id, failure.reason)  # fmt: skip
        report.client_metrics = mean_client_metrics(checked)
        metrics = MetricRecord(report.client_metrics) if report.client_metrics else None
        needed = self.rule.min_replies(self.cfg.agg)
        if checked.count < needed:
            report.skip_reason = (
                f"{checked.count} valid replies, rule {self.rule.name} needs {needed}"
            )
            log(WARNING, "round %d skipped: %s", server_round, report.skip_reason)
            return None, metrics
        start = time.perf_counter()
        candidate = self.aggregate_models(checked, server_round)
        report.aggregate_seconds = time.perf_counter() - start
        report.aggregated = True
        return candidate, metrics

    def aggregate_models(self, checked: CheckedReplies, server_round: int) -> ArrayRecord:
        """Global model plus the rule applied to the updates (client model minus global).

        With `dp.mode = central` (Naseri et al.; FL-WBC Sec. 7.1) each update is clipped to
        `dp.clip` first and noise of std z * clip / K is added to the aggregate. Flower's
        DifferentialPrivacyServerSideFixedClipping does this around a strategy, but it clips
        the replies before they are validated here (a malformed reply aborts the run, an error
        reply skips the round), overwrites them in place, and draws unseeded numpy noise.
        """
        assert self._global is not None, "begin_round must run before aggregate_train"
        updates = checked.models - self._global
        dp = self.cfg.dp
        if dp.mode == "central":
            updates = clip_rows(updates, dp.clip)
        weights = client_weights(checked.num_examples, self.cfg.agg)
        generator = torch_generator(self.cfg.seed, "aggregate", server_round)
        step = self.rule(updates, weights, self.cfg.agg, generator)
        if dp.mode == "central":
            std = central_noise_std(dp.clip, dp.noise_multiplier, checked.count)
            dp_gen = torch_generator(self.cfg.seed, "central-dp", server_round)
            step = step + noise(step.shape, std, dp.noise, dp_gen).to(step)
        return unflatten_to_record(self._global + step, self.layout, self._template)
