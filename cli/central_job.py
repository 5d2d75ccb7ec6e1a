"""The `central` job type: one model trained centrally by a recipe, then measured the way the
server measures a global model (clean, PGD and PGD-at-T accuracy, backdoor success on the
central evaluation subset) plus certified accuracy and loss on the certification set (CFAT
Table 1). It writes a run directory like a federated run's: one round record per epoch.

Recipes (the scenario level's `job.recipe`):
    pgd        Madry PGD training at `train.adv-eps` (ramped up linearly over `ramp-epochs`)
    distilled  defensive distillation at T (attack.distill-*, attacks/distillation.py): teacher
               and student from scratch, the student deployed at T = 1
    backdoor   Madry training with a share `attack.poison-fraction` of every batch stamped
               with the stripe trigger and relabelled (attacks/backdoor.py)
Job parameters: `recipe`, `train-samples` (points drawn from the clients' pool, 0: all),
`epochs`, `ramp-epochs`, `cert-radii` (comma-separated L_crt).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks.backdoor import BackdoorParams, poison_batch, stripe_trigger
from attacks.distillation import DistillationParams, distill
from certify.metrics import certification_metrics
from core.adversarial_training import madry_perturb
from core.config import ConfigError, RunConfig, parse_float_list
from core.data import ImageSet, load_splits
from core.device import resolve_device
from core.job import sgd_config
from core.models import InputSpec, build_model
from core.params import model_to_record
from core.seeds import derive_seed, torch_generator
from core.training import train
from server.app import digest, round_record
from server.evaluation import CentralEvaluator, eval_subset
from server.rounds import RoundOutcome
from server.run_store import RunStore
from strategies.robust import RoundReport

Progress = Callable[[int, int], None]  # (epoch done, epochs)
RECIPES = ("pgd", "distilled", "backdoor")


@dataclass(frozen=True)
class CentralParams:
    """The job parameters of a central run (see the module docstring)."""

    recipe: str
    train_samples: int
    epochs: int
    ramp_epochs: int
    cert_radii: tuple[float, ...]


def central_params(job: Mapping[str, Any]) -> CentralParams:
    """Validate a run's job parameters; ConfigError naming the key otherwise."""
    known = {"recipe", "train-samples", "epochs", "ramp-epochs", "cert-radii"}
    unknown = sorted(set(job) - known)
    if unknown:
        raise ConfigError(f"central job key(s) {unknown} unknown; allowed: {sorted(known)}")
    recipe = job.get("recipe", "")
    if recipe not in RECIPES:
        raise ConfigError(f"central job key 'recipe' = {recipe!r}: allowed: {', '.join(RECIPES)}")
    params = CentralParams(
        recipe=recipe,
        train_samples=int(job.get("train-samples", 0)),
        epochs=int(job.get("epochs", 1)),
        ramp_epochs=int(job.get("ramp-epochs", 0)),
        cert_radii=parse_float_list(job.get("cert-radii", "0.1")),
    )
    if params.train_samples < 0 or params.epochs < 1 or params.ramp_epochs < 0:
        raise ConfigError(f"central job: need train-samples >= 0, epochs >= 1, ramp-epochs >= 0; "
                          f"got {params}")  # fmt: skip
    if not params.cert_radii or any(r <= 0 for r in params.cert_radii):
        raise ConfigError(f"central job key 'cert-radii' = {job.get('cert-radii')!r}: radii > 0")
    return params


def training_data(pool: ImageSet, n: int, seed: int) -> ImageSet:
    """A seeded draw of `n` points of the pool (all of it when n is 0 or too large)."""
    if n == 0 or n >= len(pool):
        return pool
    order = torch.randperm(len(pool), generator=torch_generator(seed, "central-data"))
    return pool.subset(order[:n].sort().values)


def ramped_eps(eps: float, epoch: int, ramp_epochs: int) -> float:
    """L_adv of `epoch` (1-based): growing linearly to `eps` over the first `ramp_epochs`.

    >>> [ramped_eps(0.3, e, 3) for e in (1, 2, 3, 4)]
    [0.1, 0.2, 0.3, 0.3]
    """
    if ramp_epochs <= 0:
        return eps
    return round(eps * min(1.0, epoch / ramp_epochs), 10)


def _madry_epoch(
    model: nn.Module, data: ImageSet, cfg: RunConfig, eps: float, generator: torch.Generator,
    spec: InputSpec, backdoor: bool,
) -> None:  # fmt: skip
    """One epoch of Madry training at `eps` (with the stripe backdoor when `backdoor`)."""
    t = cfg.train.model_copy(update={"mode": "pgd", "adv_eps": eps, "local_epochs": 1})
    perturb = madry_perturb(t, generator) if eps > 0 else None
    rewrite = None
    if backdoor:
        params = BackdoorParams.of(cfg)
        trigger = stripe_trigger(spec, params.trigger_magnitude)
        rewrite = poison_batch(trigger, params.backdoor_target, params.poison_fraction,
                               generator, perturb)  # fmt: skip
        perturb = None  # the rewrite perturbs the clean share itself
    train(model, data, sgd_config(t), generator, perturb=perturb, transform=rewrite,
          device=next(model.parameters()).device)  # fmt: skip


def _record(
    cfg: RunConfig, round_: int, metrics: dict[str, float], train_s: float, eval_s: float
) -> dict:
    """A round record (server/run_store.py schema, as the ServerApp writes it) for one epoch
    of central training: no clients, rule `central`."""
    report = RoundReport(round=round_, aggregated=True, train_seconds=train_s)
    return round_record(cfg, RoundOutcome(report), metrics, eval_s) | {"rule": "central"}


def run_central(cfg: RunConfig, params: CentralParams, run_dir: Path, progress: Progress) -> None:
    """Train by `params.recipe`, measure after every epoch, certify at the end; the run
    directory gets config.json, rounds.jsonl, final.pt, best.pt and `done`."""
    device = resolve_device(cfg.device)
    splits = load_splits(cfg.data)
    data = training_data(splits.pool, params.train_samples, cfg.seed)
    model = build_model(cfg.model.name, splits.spec, seed=derive_seed(cfg.seed, "init")).to(device)
    # the server's measurement, certification left to the end (on the certification set)
    eval_cfg = RunConfig.from_flat({**cfg.to_flat(), "eval.l-crt": ""})
    probe = build_model(cfg.model.name, splits.spec).to(device)
    evaluator = CentralEvaluator(probe, eval_subset(splits.test, cfg.eval.n_test, cfg.seed),
                                 eval_cfg, device)  # fmt: skip
    store = RunStore(run_dir, cfg)
    generator = torch_generator(cfg.seed, "central", params.recipe)

    def measure(round_: int, train_s: float, final: bool) -> None:
        start = time.perf_counter()
        arrays = model_to_record(model)
        metrics = evaluator(arrays, round_)
        if final:
            gate = cfg.gate
            metrics |= certification_metrics(model, *splits.cert.tensors(device),
                                             params.cert_radii, gate.method,
                                             gate.budget_mb * 2**20, gate.sound_fp)  # fmt: skip
        model.eval()
        record = _record(cfg, round_, metrics, train_s, time.perf_counter() - start)
        store.append_round(record | {"model_sha256": digest(arrays)})
        store.save_checkpoint({k: v.cpu() for k, v in model.state_dict().items()}, round_,
                              metrics)  # fmt: skip

    measure(0, 0.0, final=False)
    if params.recipe == "distilled":
        start = time.perf_counter()
        a = DistillationParams.of(cfg)
        _, student = distill(model, data, a.distill_temperature, a.distill_epochs,
                             a.distill_lr, generator, device=device)  # fmt: skip
        model.load_state_dict(student.state_dict())
        measure(1, time.perf_counter() - start, final=True)
        progress(1, 1)
    else:
        for epoch in range(1, params.epochs + 1):
            start = time.perf_counter()
            eps = ramped_eps(cfg.train.adv_eps, epoch, params.ramp_epochs)
            _madry_epoch(model, data, cfg, eps, generator, splits.spec,
                         backdoor=params.recipe == "backdoor")  # fmt: skip
            measure(epoch, time.perf_counter() - start, final=epoch == params.epochs)
            progress(epoch, params.epochs)
    store.finish()  # only a finished run gets `done`: an interrupted one is run again
    store.close()
