"""The Flower adapter around the pure aggregation rules: one strategy, parameterised by the rule.

Each round it samples `train.clients-per-round` of the nodes connected at that moment (as many as
there are when fewer) with a seeded generator, checks every reply on its own
(strategies/replies.py), turns the accepted client models into updates against the global model,
applies the configured rule (strategies/aggregators.py) and returns global + update. A round
with fewer valid replies than the rule needs returns no model, so the global model stays
unchanged. What happened in the round is kept in `last_report` for the server's run store.
Waiting for nodes and for replies is the server's round loop's job (server/rounds.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
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
from core.wire import ARRAYS, CONFIG, NUM_EXAMPLES, SERVER_ROUND
from strategies.aggregators import RULES, check_precondition
from strategies.replies import CheckedReplies, Failure, canonical_order, check_replies, is_lost


@dataclass
class RoundReport:
    """What the strategy saw and did in one round (the defender's view only)."""

    round: int
    sampled: int = 0
    nodes: list[int] = field(default_factory=list)  # the node ids sampled
    received: int = 0  # replies that came from their node (valid or not); lost nodes excluded
    accepted: int = 0  # valid replies, handed to the rule
    failures: list[Failure] = field(default_factory=list)
    aggregated: bool = False
    skip_reason: str = ""
    wait_seconds: float = 0.0  # waiting for train.min-nodes connected nodes
    train_seconds: float = 0.0  # from sending the model to having all replies
    aggregate_seconds: float = 0.0
    client_metrics: dict[str, float] = field(default_factory=dict)


def required_nodes(cfg: RunConfig) -> int:
    """The fewest connected nodes a round runs with: `train.min-nodes`, or when 0 the fewest
    replies the aggregation rule accepts."""
    return cfg.train.min_nodes or RULES[cfg.agg.rule].min_replies(cfg.agg)


def sample_nodes(nodes: Sequence[int], k: int, seed: int, server_round: int) -> list[int]:
    """`min(k, len(nodes))` of the connected `nodes`, drawn without replacement by a generator
    seeded with (seed, round): the same connected set gives the same sample in every run,
    whatever order the ids come in.

    >>> sample_nodes([30, 10, 20], 2, seed=0, server_round=1) == sample_nodes([10, 20, 30], 2, 0, 1)
    True
    >>> sorted(sample_nodes([7, 8], 5, seed=0, server_round=1))
    [7, 8]
    """
    pool = sorted(nodes)
    rng = np.random.default_rng(derive_seed(seed, "sample", server_round))
    return [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]


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

    It carries no state from one round to the next: every random draw (sampling, aggregation,
    noise) is seeded by (run seed, purpose, round), so the round number is all a resumed run
    needs (`state_dict` is empty).
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
            min_available_nodes=required_nodes(cfg),
            weighted_by_key=NUM_EXAMPLES,
            arrayrecord_key=ARRAYS,
            configrecord_key=CONFIG,
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
        agg = self.cfg.agg
        log(
            INFO,
            "\t├──> rule %s (f=%d, beta=%.2f, m=%d, tau=%g, noise-std=%g, weighting=%s)",
            agg.rule, agg.f, agg.beta, agg.m, agg.tau, agg.noise_std, agg.weighting,
        )  # fmt: skip
        log(
            INFO,
            "\t└──> %d clients per round from the nodes connected, at least %d",
            self.min_train_nodes,
            self.min_available_nodes,
        )

    def state_dict(self) -> dict:
        """Nothing: no state survives a round (see the class docstring)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Accept the empty state of `state_dict`."""
        if state:
            raise ValueError(f"RobustStrategy has no state to load, got keys {sorted(state)}")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample from the nodes connected now with the run's seed; send them the global model."""
        chosen = sample_nodes(
            list(grid.get_node_ids()), self.min_train_nodes, self.cfg.seed, server_round
        )
        self.begin_round(server_round, arrays, sampled=len(chosen), nodes=chosen)
        config[SERVER_ROUND] = server_round
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(content, chosen, MessageType.TRAIN)

    def begin_round(
        self, server_round: int, arrays: ArrayRecord, sampled: int, nodes: Sequence[int] = ()
    ) -> None:
        """Remember the global model the `sampled` nodes (ids `nodes`) start from; reset the
        report."""
        self._global = flatten_record(arrays, self.layout)
        self._template = arrays
        self.last_report = RoundReport(round=server_round, sampled=sampled, nodes=sorted(nodes))
        self._sent_at = time.perf_counter()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the valid replies with the rule; None (round skipped) if too few."""
        report = self.last_report
        report.train_seconds = time.perf_counter() - self._sent_at
        replies = list(replies)
        report.received = sum(not is_lost(msg) for msg in replies)
        # arrival order and node ids vary between runs; sorting by content keeps sums reproducible
        checked = canonical_order(check_replies(replies, self.layout))
        report.accepted = checked.count
        report.failures = sorted(checked.failures, key=lambda f: f.node_id)
        for failure in checked.failures:
            log(WARNING, "[certfl] round %d: node %d failed: %s", server_round,
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
