"""The ServerApp: one validated config -> data, model, robust strategy, evaluation, run store.

Flower's `Strategy.start` drives the rounds; after each round its `evaluate_fn` hook is where the
server measures the global model, writes the round record and checkpoints, and logs one line.
"""

from __future__ import annotations

import hashlib
import time
from logging import ERROR, INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from attacks.collusion import channel_root, read_ledger
from attacks.registry import load_policies
from core.config import RunConfig
from core.data import Splits, load_splits
from core.device import resolve_device
from core.models import build_model
from core.params import model_to_record, record_to_state
from core.seeds import derive_seed
from server.evaluation import CentralEvaluator, eval_subset
from server.run_store import RunStore, resolve_run_dir
from strategies.crfl import CRFLStrategy
from strategies.gate import CandidateMeasurer, CertificationGate
from strategies.robust import RobustStrategy

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


class RoundRecorder:
    """Flower's `evaluate_fn`: measure the global model, record the round, checkpoint, log."""

    def __init__(
        self,
        cfg: RunConfig,
        strategy: RobustStrategy | CertificationGate,
        evaluator: CentralEvaluator,
        store: RunStore,
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.evaluator = evaluator
        self.store = store
        self._last_metrics: dict[str, float] = {}

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        start = time.perf_counter()
        report = self.strategy.last_report
        if server_round > 0 and not report.aggregated:
            metrics = self._last_metrics  # the global model is unchanged: no need to measure
        else:
            metrics = self.evaluator(arrays, server_round)
            self.store.save_checkpoint(record_to_state(arrays), server_round, metrics)
        eval_s = time.perf_counter() - start
        self._last_metrics = metrics
        record = self._record(server_round, metrics, eval_s) | {"model_sha256": digest(arrays)}
        self.store.append_round(record)
        log(INFO, "%s", round_line(record, self.cfg.num_rounds))
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    def _record(self, server_round: int, metrics: dict[str, float], eval_s: float) -> dict:
        if server_round == 0:
            return {
                "round": 0, "rule": self.cfg.agg.rule, "sampled": 0, "received": 0,
                "accepted": 0, "failures": [], "aggregated": True, "skip_reason": "",
                "timings": {"train_s": 0.0, "aggregate_s": 0.0, "gate_s": 0.0,
                            "eval_s": eval_s, "round_s": eval_s},
                "client": {}, "metrics": metrics, "gate": None,
            }  # fmt: skip
        r = self.strategy.last_report
        gate_s = r.gate["seconds"] if r.gate else 0.0
        return {
            "round": server_round,
            "rule": self.cfg.agg.rule,
            "sampled": r.sampled,
            "received": r.received,
            "accepted": r.received - len(r.failures),
            "failures": r.failures,
            "aggregated": r.aggregated,
            "skip_reason": r.skip_reason,
            "timings": {
                "train_s": r.train_seconds,
                "aggregate_s": r.aggregate_seconds,
                "gate_s": gate_s,
                "eval_s": eval_s,
                "round_s": r.train_seconds + r.aggregate_seconds + gate_s + eval_s,
            },
            "client": r.client_metrics,
            "metrics": metrics,
            "gate": r.gate,
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
    certification gate when `gate.enabled`."""
    robust = (CRFLStrategy if cfg.crfl.enabled else RobustStrategy)(cfg, initial)
    if not cfg.gate.enabled:
        return robust
    measurer_model = build_model(cfg.model.name, splits.spec).to(device)
    measure = CandidateMeasurer(measurer_model, splits.val, splits.cert, cfg, device)
    return CertificationGate(robust, measure, cfg)


def run_server(grid: Grid, cfg: RunConfig, run_id: int) -> Path:
    """Run `cfg.num_rounds` rounds of Flower run `run_id` on `grid`; return the run directory.

    Afterwards the colluders' ground truth, when their channel is reachable from here, is copied
    into the run directory for evaluation; the strategy never sees it."""
    device = resolve_device(cfg.device)
    splits = load_splits(cfg.data)
    model = build_model(cfg.model.name, splits.spec, seed=derive_seed(cfg.seed, "init")).to(device)
    initial = model_to_record(model)
    strategy = build_strategy(cfg, initial, splits, device)
    store = RunStore(resolve_run_dir(cfg), cfg)
    log(INFO, "[certfl] run directory: %s", store.root)
    evaluator = CentralEvaluator(
        model, eval_subset(splits.test, cfg.eval.n_test, cfg.seed), cfg, device
    )
    try:
        strategy.start(
            grid,
            initial,
            num_rounds=cfg.num_rounds,
            timeout=cfg.train.round_timeout,
            train_config=ConfigRecord(),
            evaluate_fn=RoundRecorder(cfg, strategy, evaluator, store),
        )
    finally:
        store.save_ground_truth(read_ledger(channel_root(cfg, run_id)))
        store.close()
    log(INFO, "[certfl] finished; run directory: %s", store.root)
    return store.root
