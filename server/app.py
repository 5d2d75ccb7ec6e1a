"""The ServerApp: one validated config -> data, model, robust strategy, evaluation, run store.

certfl's round loop (server/rounds.py) drives the rounds; after each one `RoundRecorder`
measures the global model, writes the round record and checkpoints, and logs one line.
"""

from __future__ import annotations

import hashlib
import json
import time
from logging import ERROR, INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from attacks.collusion import channel_root, read_ledger
from attacks.registry import load_policies
from core.config import ConfigError, RunConfig
from core.data import Splits, load_splits
from core.device import resolve_device
from core.models import build_model
from core.params import model_to_record, record_to_state
from core.seeds import derive_seed
from server.checkpoint import ResumePoint, check_resumable, load_resume_point, model_arrays
from server.evaluation import CentralEvaluator, eval_subset
from server.rounds import RoundLimits, RoundOutcome, run_rounds
from server.run_store import RunStore, load_checkpoint, resolve_run_dir
from strategies.crfl import CRFLStrategy
from strategies.gate import CertificationGate
from strategies.gate_measure import CandidateMeasurer
from strategies.robust import RobustStrategy, RoundReport, required_nodes

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls, in simulation and in deployment alike."""
    load_policies()  # registers the policies' names and `attack.*` keys before parsing
    try:
        cfg = RunConfig.from_flat(context.run_config)
    except ValueError as err:
        log(ERROR, "bad run config: %s", err)
        raise
    run_server(grid, cfg, context.run_id)


class GroundTruth:
    """The colluders' ground truth of this run so far: what a resumed run brought along, and
    what their channel (when reachable from the server) holds for the rounds played since."""

    def __init__(self, channel: Path, earlier: list[dict] | None = None, after: int = 0) -> None:
        self.channel = channel
        self.earlier = list(earlier or [])
        self.after = after  # rounds up to this one come from `earlier`

    def upto(self, server_round: int) -> list[dict]:
        """The entries of rounds up to `server_round`."""
        ledger = read_ledger(self.channel)
        return self.earlier + [e for e in ledger if self.after < e["round"] <= server_round]


class RoundRecorder:
    """After each round: measure the global model, checkpoint it, record the round, write the
    resume point and the ground truth so far, log a line."""

    def __init__(
        self,
        cfg: RunConfig,
        evaluator: CentralEvaluator,
        store: RunStore,
        strategy: RobustStrategy | CertificationGate,
        truth: GroundTruth,
    ) -> None:
        self.cfg = cfg
        self.evaluator = evaluator
        self.store = store
        self.strategy = strategy
        self.truth = truth
        self._last_metrics: dict[str, float] = {}

    def restore(self, point: ResumePoint) -> None:
        """Continue after `point`: its metrics stand for the model until it changes."""
        self._last_metrics = dict(point.metrics)

    def __call__(self, server_round: int, arrays: ArrayRecord, outcome: RoundOutcome) -> None:
        """Record round `server_round` (0: the initial model), whose global model is `arrays`."""
        start = time.perf_counter()
        if server_round > 0 and not outcome.changed:
            metrics = self._last_metrics  # the global model is unchanged: no need to measure
        else:
            metrics = self.evaluator(arrays, server_round)
            self.store.save_checkpoint(record_to_state(arrays), server_round, metrics)
        eval_s = time.perf_counter() - start
        self._last_metrics = metrics
        record = round_record(self.cfg, outcome, metrics, eval_s) | {"model_sha256": digest(arrays)}
        line = self.store.stamp(record)
        truth = self.truth.upto(server_round)
        # the resume point first: a round recorded without one is dropped and played again
        self.store.save_resume_point(
            ResumePoint(
                round=server_round,
                arrays=model_arrays(arrays),
                strategy=self.strategy.state_dict(),
                best_score=self.store.best_score,
                metrics=dict(metrics),
                record=line,
                config=self.cfg.to_flat(),
                ground_truth=truth,
            )
        )
        self.store.append_round(line)
        self.store.save_ground_truth(truth)
        log(INFO, "%s", round_line(record, self.cfg.num_rounds))


def round_record(
    cfg: RunConfig, outcome: RoundOutcome, metrics: dict[str, float], eval_s: float
) -> dict:
    """The round's record (schema in server/run_store.py) without the model digest."""
    r, gate = outcome.report, outcome.gate
    gate_s = gate.seconds if gate else 0.0
    rejected = gate is not None and not gate.accepted
    return {
        "round": r.round,
        "rule": cfg.agg.rule,
        "sampled": r.sampled,
        "nodes": r.nodes,
        "received": r.received,
        "accepted": r.accepted,
        "failures": r.failures,
        "aggregated": r.round == 0 or outcome.changed,
        "skip_reason": "gate: " + ", ".join(gate.failed) if rejected else r.skip_reason,
        "timings": {
            "wait_s": r.wait_seconds,
            "train_s": r.train_seconds,
            "aggregate_s": r.aggregate_seconds,
            "gate_s": gate_s,
            "eval_s": eval_s,
            "round_s": r.wait_seconds + r.train_seconds + r.aggregate_seconds + gate_s + eval_s,
        },
        "client": r.client_metrics,
        "metrics": metrics,
        "gate": gate.to_record() if gate else None,
    }


def digest(arrays: ArrayRecord) -> str:
    """SHA-256 of the model's arrays in key order: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for key, array in arrays.items():
        h.update(key.encode())
        h.update(array.numpy().tobytes())
    return h.hexdigest()


def round_line(record: dict, num_rounds: int) -> str:
    """The one human-readable line per round."""
    m, t = record["metrics"], record["timings"]
    if record["round"] == 0:
        status = "initial model"
    elif record["aggregated"]:
        status = "accepted"
    else:
        status = f"SKIPPED ({record['skip_reason']})"
    pgd = f"{m['pgd_acc']:.3f}" if "pgd_acc" in m else "-"
    if "pgd_t_acc" in m:
        pgd += f" (at T={m['pgd_temperature']:g}: {m['pgd_t_acc']:.3f})"
    return (
        f"[certfl] round {record['round']:>3}/{num_rounds} | {record['rule']} | "
        f"replies {record['accepted']} valid of {record['received']} received "
        f"({record['sampled']} sampled) | "
        f"{status} | clean acc {m['clean_acc']:.3f} | pgd acc {pgd} | "
        f"train {t['train_s']:.1f}s agg {t['aggregate_s']:.2f}s eval {t['eval_s']:.1f}s"
    )


def build_strategy(
    cfg: RunConfig, initial: ArrayRecord, splits: Splits, device: torch.device
) -> RobustStrategy | CertificationGate:
    """The robust strategy (with CRFL's server step when `crfl.enabled`), wrapped by the
    certification gate when `gate.enabled` (continuing from `gate.init-state` when set)."""
    robust = (CRFLStrategy if cfg.crfl.enabled else RobustStrategy)(cfg, initial)
    if not cfg.gate.enabled:
        return robust
    measurer_model = build_model(cfg.model.name, splits.spec).to(device)
    measure = CandidateMeasurer(measurer_model, splits.val, splits.cert, cfg, device)
    gate = CertificationGate(robust, measure, cfg.gate)
    if cfg.gate.init_state:
        path = existing(cfg.gate.init_state, "gate.init-state")
        gate.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
    return gate


def existing(path: str, key: str) -> Path:
    """`path` as a Path; a ConfigError naming the run config `key` when no such file exists."""
    if not Path(path).is_file():
        raise ConfigError(f"run config key {key!r} = {path!r}: no such file")
    return Path(path)


def run_server(grid: Grid, cfg: RunConfig, run_id: int) -> Path:
    """Run rounds 1..`cfg.num_rounds` of Flower run `run_id` on `grid` (with `resume-from`, the
    rounds after that run directory's resume point); return the run directory.

    After every round the colluders' ground truth so far, when their channel is reachable from
    here, is copied into the run directory for evaluation; the strategy never sees it."""
    point = None
    if cfg.resume_from:
        point = load_resume_point(Path(cfg.resume_from).expanduser().resolve())
        check_resumable(cfg, point)
    device = resolve_device(cfg.device)
    splits = load_splits(cfg.data)
    model = build_model(cfg.model.name, splits.spec, seed=derive_seed(cfg.seed, "init")).to(device)
    if cfg.init_checkpoint:
        model.load_state_dict(
            load_checkpoint(existing(cfg.init_checkpoint, "init-checkpoint"))["state_dict"]
        )
    initial = model_to_record(model)
    strategy = build_strategy(cfg, initial, splits, device)
    evaluator = CentralEvaluator(
        model, eval_subset(splits.test, cfg.eval.n_test, cfg.seed), cfg, device
    )
    channel = channel_root(cfg, run_id)
    if point is None:
        store = RunStore(resolve_run_dir(cfg), cfg)
        record = RoundRecorder(cfg, evaluator, store, strategy, GroundTruth(channel))
        arrays, first = initial, 1
    else:
        arrays, first = point.global_model(), point.round + 1
        if digest(arrays) != point.record["model_sha256"]:
            raise ConfigError(f"{cfg.resume_from}: resume point's model does not match its digest")
        strategy.load_state_dict(point.strategy)
        store = RunStore.resume(Path(cfg.resume_from).expanduser().resolve(), cfg, point)
        truth = GroundTruth(channel, point.ground_truth, after=point.round)
        record = RoundRecorder(cfg, evaluator, store, strategy, truth)
        record.restore(point)
        log(INFO, "[certfl] resuming after round %d (model %s)", point.round, digest(arrays)[:12])
    log(INFO, "[certfl] run directory: %s", store.root)
    limits = RoundLimits(required_nodes(cfg), cfg.train.min_nodes_timeout, cfg.train.round_timeout)
    log(INFO, "Starting %s strategy:", type(strategy).__name__)
    strategy.summary()
    try:
        if point is None:
            record(0, initial, RoundOutcome(RoundReport(round=0)))
        run_rounds(grid, strategy, arrays, range(first, cfg.num_rounds + 1), limits, record)
        store.save_ground_truth(record.truth.upto(cfg.num_rounds))
        store.finish()
    finally:
        store.close()
    log(INFO, "[certfl] finished; run directory: %s", store.root)
    return store.root
