"""The resume point of a run: what a new ServerApp needs to continue where a dead one stopped.

After every round (its record included) the server rewrites `resume.pt` in the run directory,
atomically (server/run_store.py): the round number, the global model after it (exact arrays),
the strategy's `state_dict()` (the certification gate's reference; the robust strategy has none),
the best PGD accuracy so far (for best.pt), the round's measured metrics and record, the run
config, and the colluders' ground truth up to that round. The strategy's and the sampler's
random state need no saving: every draw of the server (sampling, aggregation noise, PGD in the
gate and in evaluation) and of the clients is seeded by (run seed, purpose, round[, partition]),
so the round number and the seed fix them.

`resume-from = RUN_DIR` in the run config continues RUN_DIR: rounds after the checkpoint's are
played, a round in flight when the server died is played again from its start (nothing
accepted is lost, no round is counted twice), and with the same seed and the same nodes the run
ends with the same global model as one never interrupted. The run config must be the one the
run started with, except the keys in `MAY_CHANGE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord

from core.config import ConfigError, RunConfig

RESUME_FILE = "resume.pt"
VERSION = 1
MAY_CHANGE = frozenset(
    {
        "resume-from",
        "num-rounds",  # to run longer (never below the rounds already played)
        "output-dir",  # the run directory is resume-from's
        "run-name",
        "data.dir",  # the same data, maybe at another path
        "device",
        "train.round-timeout",
        "train.min-nodes-timeout",
        "attack.channel-dir",
    }
)


@dataclass(frozen=True)
class ResumePoint:
    """The state after round `round` (0: the initial model, before any training round)."""

    round: int
    arrays: dict[str, torch.Tensor]  # the global model, key order and dtypes kept
    strategy: dict  # the strategy's state_dict() (JSON-able)
    best_score: float  # the highest central PGD accuracy so far (best.pt)
    metrics: dict[str, float]  # the global model's central metrics
    record: dict[str, Any]  # this round's record, as in rounds.jsonl
    config: dict[str, Any]  # the flat run config
    ground_truth: list[dict[str, Any]]  # the colluders' ledger up to this round

    def global_model(self) -> ArrayRecord:
        """The global model as the ArrayRecord the rounds continue from (bit-identical)."""
        return ArrayRecord({k: Array(v.numpy()) for k, v in self.arrays.items()})

    def to_payload(self) -> dict[str, Any]:
        """What `torch.save` writes."""
        return {"version": VERSION, **self.__dict__}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ResumePoint:
        if payload.get("version") != VERSION:
            raise ConfigError(
                f"resume point version {payload.get('version')!r}, expected {VERSION}"
            )
        return cls(**{k: v for k, v in payload.items() if k != "version"})


def model_arrays(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The arrays of a global model as tensors (copies), in key order."""
    return {k: torch.from_numpy(a.numpy().copy()) for k, a in arrays.items()}


def load_resume_point(run_dir: Path) -> ResumePoint:
    """The resume point of `run_dir`; ConfigError when there is none."""
    path = run_dir / RESUME_FILE
    if not path.is_file():
        raise ConfigError(
            f"run config key 'resume-from' = {str(run_dir)!r}: no {RESUME_FILE} there "
            "(not a certfl run directory, or it died before its first round was recorded)"
        )
    return ResumePoint.from_payload(torch.load(path, map_location="cpu", weights_only=True))


def check_resumable(cfg: RunConfig, point: ResumePoint) -> None:
    """ConfigError naming each key of `cfg` that differs from the run's own config (other than
    `MAY_CHANGE`), or a `num-rounds` below the rounds already played."""
    now, then = _comparable(cfg.to_flat()), _comparable(point.config)
    keys = (set(now) | set(then)) - MAY_CHANGE
    changed = sorted(k for k in keys if now.get(k) != then.get(k))
    if changed:
        details = "; ".join(f"'{k}' = {now.get(k)!r}, the run has {then.get(k)!r}" for k in changed)
        raise ConfigError(
            f"run config key 'resume-from' = {cfg.resume_from!r}: the resumed run must keep its "
            f"config ({details}); only {', '.join(sorted(MAY_CHANGE))} may change"
        )
    if cfg.num_rounds < point.round:
        raise ConfigError(
            f"run config key 'num-rounds' = {cfg.num_rounds}: the run in "
            f"{cfg.resume_from!r} has already played {point.round} rounds"
        )


def _comparable(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`flat` with the values that follow `num-rounds` (which may change) put back to what they
    mean: an attack ending at the last round has no end (its sentinel, resolved at parse)."""
    out = dict(flat)
    if out.get("roles.attack-end-round") == out.get("num-rounds"):
        out["roles.attack-end-round"] = "no end (num-rounds)"
    return out
