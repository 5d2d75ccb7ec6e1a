"""The benign role: local SGD or Madry PGD adversarial training from the global model."""

from __future__ import annotations

import os

import torch
from flwr.app import ArrayRecord, MetricRecord

from attacks.adversarial_training import benign_train
from core.job import LocalJob


def limit_threads() -> None:
    """Honour CERTFL_TORCH_THREADS (set by `certfl launch`, where many nodes share the cores)."""
    threads = os.environ.get("CERTFL_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def benign_update(job: LocalJob) -> tuple[ArrayRecord, MetricRecord]:
    """Train a copy of the global model benignly and reply with it."""
    model = job.global_model()
    loss = benign_train(job, model)
    return job.reply(model, **{"train-loss": loss})
