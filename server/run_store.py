"""The run directory: resolved config, one JSON record per round, checkpoints and a plot.

Layout of `<output-dir>/<run-name>/`:
    config.json     the resolved run config as flat dotted keys
    rounds.jsonl    one JSON object per line, round 0 (initial model) first; schema below
    final.pt        the global model after the last round
    best.pt         the global model with the highest central PGD accuracy so far
    metrics.png     central clean and PGD accuracy per round
    ground_truth.jsonl  the colluders' own record of who attacked in which round, copied from
                    their channel after the last round when it is reachable (evaluation only:
                    the strategy never reads it); lines {round, partition_id, policy, attacked,
                    coalition:[partition ids], error}
    done            written last; holds the wall time of the run

Round record schema (`ROUND_SCHEMA_VERSION` 1):
    round:int, time:str (UTC ISO 8601), rule:str,
    sampled:int, received:int, accepted:int (replies aggregated),
    failures:[{node_id:int, reason:str}], aggregated:bool (a new model came out),
    skip_reason:str ("" when aggregated),
    timings:{train_s, aggregate_s, gate_s, eval_s, round_s} (seconds),
    client:{<metric>: mean over accepted replies, e.g. train-loss, num-examples},
    metrics:{clean_acc, clean_loss, pgd_acc, pgd_loss, n_test, adv_eps, and with eval.l-crt
        cert_acc@<eps>, cert_loss@<eps>, and the THREAT_METRICS of server/threat_metrics.py,
        e.g. tp_confidence, tp_accuracy on D_M} of the global model after the round,
    model_sha256:str, digest of the global model's arrays (equal = bit-identical),
    gate: null without the certification gate or without a candidate, else the gate's
        report (strategies/gate.py `GateReport.to_record`): {rule:str, accepted:bool,
        warmup:bool, seconds (the gate's time, round-0 measurement included),
        metrics:{clean_acc, pgd_acc, cert_acc@<eps>, cert_loss@<eps>} of the candidate,
        samples:{same keys: points measured}, early:str (why measuring stopped early, or ""),
        reference:{metric: the value its bound derives from},
        checks:[{metric, value, reference, bound, criterion, passed}], failed:[str],
        timings:{clean, pgd, cert@<eps>: busy seconds, wall, initial},
        shadow:[{rule, accepted, failed}] (rules judged but not enforced),
        initial:{metrics} of the model the run started from when measured in this round, else null}
Checkpoints are `torch.save` dicts: {model:str, state_dict:dict, config:dict (flat), round:int,
metrics:dict}; `load_checkpoint` reads them back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core.config import RunConfig

ROUND_SCHEMA_VERSION = 1


def resolve_run_dir(cfg: RunConfig) -> Path:
    """`<output-dir>/<run-name>`, the name defaulting to a UTC timestamp plus the seed."""
    name = cfg.run_name or datetime.now(UTC).strftime(f"%Y%m%d-%H%M%S-seed{cfg.seed}")
    return Path(cfg.output_dir).expanduser().resolve() / name


class RunStore:
    """Writes one run directory; every write is flushed so a crash loses at most one record."""

    def __init__(self, root: Path, cfg: RunConfig) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.cfg = cfg
        self.started = time.perf_counter()
        self._best = float("-inf")
        (root / "config.json").write_text(json.dumps(cfg.to_flat(), indent=2, sort_keys=True))
        self._rounds = (root / "rounds.jsonl").open("a", encoding="utf-8")

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Append one round record (schema in the module docstring)."""
        line = {"schema": ROUND_SCHEMA_VERSION, "time": datetime.now(UTC).isoformat(), **record}
        self._rounds.write(json.dumps(line, default=_jsonable) + "\n")
        self._rounds.flush()

    def save_checkpoint(
        self, state: Mapping[str, torch.Tensor], round_: int, metrics: Mapping[str, float]
    ) -> None:
        """Write final.pt, and best.pt when the round's PGD accuracy is the best so far."""
        payload = {
            "model": self.cfg.model.name,
            "state_dict": dict(state),
            "config": self.cfg.to_flat(),
            "round": round_,
            "metrics": dict(metrics),
        }
        _atomic_save(payload, self.root / "final.pt")
        score = metrics.get("pgd_acc", float("-inf"))
        if score > self._best:
            self._best = score
            _atomic_save(payload, self.root / "best.pt")

    def save_ground_truth(self, ledger: list[dict[str, Any]]) -> None:
        """Write the colluders' ledger as ground_truth.jsonl (nothing when there is none)."""
        if ledger:
            lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in ledger)
            (self.root / "ground_truth.jsonl").write_text(lines, encoding="utf-8")

    def close(self) -> None:
        """Plot the metrics and mark the run complete."""
        self._rounds.close()
        plot_rounds(self.root / "rounds.jsonl", self.root / "metrics.png")
        (self.root / "done").write_text(f"{time.perf_counter() - self.started:.1f}\n")


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """All round records of a rounds.jsonl file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `RunStore.save_checkpoint`."""
    return torch.load(path, map_location="cpu", weights_only=True)


def plot_rounds(rounds_path: Path, out: Path) -> None:
    """Central clean and PGD accuracy per round as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = read_rounds(rounds_path)
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("clean_acc", "clean accuracy"), ("pgd_acc", "PGD accuracy")):
        ax.plot(xs, [r["metrics"].get(key, float("nan")) for r in rounds], marker="o", label=label)
    skipped = [r["round"] for r in rounds if r["round"] > 0 and not r["aggregated"]]
    for x in skipped:
        ax.axvline(x, color="grey", alpha=0.3)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (central test subset)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _atomic_save(payload: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    """JSON fallback for dataclasses (failures) and numpy/torch scalars."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
