"""Flat update views of a round, for policies that craft their reply as an update vector.

Replacement and Byzantine policies think in updates, reply minus global model, over the
floating-point state entries in core/params.py's flat layout (the vectors the aggregators see);
integer buffers always come from the global model.
"""

from __future__ import annotations

import torch
from torch import nn

from core.job import LocalJob, LocalResult
from core.params import (
    Layout,
    flatten_record,
    load_record,
    model_to_record,
    record_to_numpy,
    unflatten_to_record,
)


def layout_of(job: LocalJob) -> Layout:
    """The flat layout of the round's global model."""
    return Layout.of(record_to_numpy(job.global_arrays))


def global_vector(job: LocalJob) -> torch.Tensor:
    """The global model G as a flat float32 vector."""
    return flatten_record(job.global_arrays, layout_of(job))


def model_vector(job: LocalJob, model: nn.Module) -> torch.Tensor:
    """`model` as a flat float32 vector in the global model's layout."""
    return flatten_record(model_to_record(model), layout_of(job))


def model_update(job: LocalJob, model: nn.Module) -> torch.Tensor:
    """`model` minus the global model, flat: the update an aggregator would see."""
    return model_vector(job, model) - global_vector(job)


def vector_model(job: LocalJob, vector: torch.Tensor) -> nn.Module:
    """A copy of the global model holding the flat `vector` in its floating-point entries."""
    layout = layout_of(job)
    record = unflatten_to_record(vector.cpu(), layout, job.global_arrays)
    return load_record(job.global_model(), record)


def reply_with_update(job: LocalJob, update: torch.Tensor, **metrics: float) -> LocalResult:
    """The reply G + `update`, with the same metadata a benign reply carries."""
    return job.reply(vector_model(job, global_vector(job) + update.cpu()), **metrics)
