"""The run directory: resolved config, one JSON record per round, checkpoints and a plot.

Layout of `<output-dir>/<run-name>/`:
    config.json     the resolved run config as flat dotted keys
    rounds.jsonl    one JSON object per line, round 0 (initial model) first; schema below
    final.pt        the global model after the last round
    best.pt         the global model with the highest central PGD accuracy so far
    metrics.png     central clean and PGD accuracy per round
    ground_truth.jsonl  the colluders' own record of who attacked in which round, copied from
                    their channel after every round when it is reachable (evaluation only:
                    the strategy never reads it); lines {round, partition_id, policy, attacked,
                    coalition:[partition ids], error}
    resume.pt       the resume point after the last round recorded (server/checkpoint.py)
    done            written last, only when every round was played; the run's wall time
Every file but rounds.jsonl is replaced atomically (temporary file, fsync, rename), so a process
killed at any moment leaves the old version or the new one; rounds.jsonl is appended line by
line, and a resumed run rewrites it from its resume point (`RunStore.resume`).

Round record schema (`ROUND_SCHEMA_VERSION` 2):
    round:int, time:str (UTC ISO 8601), rule:str,
    sampled:int, nodes:[int] (the node ids sampled), received:int (replies that came from their
    node), accepted:int (replies aggregated),
    failures:[{node_id:int, reason:str}] (invalid replies, client errors, and lost nodes: "node
        lost (its heartbeat expired)" or "no reply within the round deadline"),
    aggregated:bool (a new model came out), skip_reason:str ("" when aggregated; e.g. too few
        nodes connected, too few valid replies, the gate),
    timings:{wait_s (for train.min-nodes), train_s, aggregate_s, gate_s, eval_s, round_s} (s),
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
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch

from core.config import RunConfig
from server.checkpoint import RESUME_FILE, ResumePoint

ROUND_SCHEMA_VERSION = 2


def resolve_run_dir(cfg: RunConfig) -> Path:
    """`<output-dir>/<run-name>`, the name defaulting to a UTC timestamp plus the seed."""
    name = cfg.run_name or datetime.now(UTC).strftime(f"%Y%m%d-%H%M%S-seed{cfg.seed}")
    return Path(cfg.output_dir).expanduser().resolve() / name


class RunStore:
    """Writes one run directory; every write is flushed so a crash loses at most one record."""

    def __init__(self, root: Path, cfg: RunConfig, best_score: float = float("-inf")) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.cfg = cfg
        self.started = time.perf_counter()
        self.best_score = best_score  # the highest central PGD accuracy so far (best.pt)
        _atomic_write_text(
            root / "config.json", json.dumps(cfg.to_flat(), indent=2, sort_keys=True)
        )
        self._rounds = (root / "rounds.jsonl").open("a", encoding="utf-8")

    @classmethod
    def resume(cls, root: Path, cfg: RunConfig, point: ResumePoint) -> RunStore:
        """Reopen `root` to continue after `point`: rounds.jsonl is rewritten (atomically) to
        the records before the point's round plus the point's own, so that a round recorded
        after the point (the server died before its resume point was written) or a line cut
        short is dropped and played again rather than counted twice."""
        kept = [r for r in _read_valid_lines(root / "rounds.jsonl") if r["round"] < point.round]
        lines = [*kept, point.record]
        _atomic_write_text(root / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
        (root / "done").unlink(missing_ok=True)
        return cls(root, cfg, best_score=point.best_score)

    def stamp(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """`record` as rounds.jsonl holds it: schema version and time added, JSON types only."""
        line = {"schema": ROUND_SCHEMA_VERSION, "time": datetime.now(UTC).isoformat(), **record}
        return json.loads(json.dumps(line, default=_jsonable))

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Append one round record (schema in the module docstring; `stamp`ed if not yet)."""
        line = record if "schema" in record else self.stamp(record)
        self._rounds.write(json.dumps(line) + "\n")
        self._rounds.flush()

    def save_resume_point(self, point: ResumePoint) -> None:
        """Replace resume.pt with `point`."""
        _atomic_save(point.to_payload(), self.root / RESUME_FILE)

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
        if score > self.best_score:
            self.best_score = score
            _atomic_save(payload, self.root / "best.pt")

    def save_ground_truth(self, ledger: list[dict[str, Any]]) -> None:
        """Write the colluders' ledger as ground_truth.jsonl (nothing when there is none)."""
        if ledger:
            lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in ledger)
            _atomic_write_text(self.root / "ground_truth.jsonl", lines)

    def finish(self) -> None:
        """Plot the metrics and mark the run complete (only a finished run gets `done`)."""
        self._rounds.flush()
        plot_rounds(self.root / "rounds.jsonl", self.root / "metrics.png")
        _atomic_write_text(self.root / "done", f"{time.perf_counter() - self.started:.1f}\n")

    def close(self) -> None:
        """Close the round log (the run may be unfinished: a resumed run continues it)."""
        self._rounds.close()


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """All round records of a rounds.jsonl file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_valid_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a rounds.jsonl file, without a last line cut short by a kill."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


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
    """torch.save `payload` to `path` atomically (see `_atomic_write`)."""
    _atomic_write(path, lambda f: torch.save(payload, f))


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `_atomic_write`)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a temporary file beside `path`, flush it to disk, rename it over `path`:
    whenever the process is killed, `path` holds the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)


def _jsonable(value: Any) -> Any:
    """JSON fallback for dataclasses (failures) and numpy/torch scalars."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
