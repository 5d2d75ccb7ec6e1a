"""Model state <-> Flower ArrayRecord <-> one flat float vector, and validation of client replies.

Aggregators work on flat vectors. Only floating-point state entries (weights, biases, BatchNorm
running statistics) are aggregated; integer buffers such as `num_batches_tracked` always come
from the global model, so a client cannot set them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn


def state_to_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A torch state_dict as an ArrayRecord (CPU numpy arrays), keys in the state's order."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def model_to_record(model: nn.Module) -> ArrayRecord:
    """The model's state_dict as an ArrayRecord (CPU numpy arrays)."""
    return state_to_record(model.state_dict())


def record_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord as a torch state_dict."""
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def load_record(model: nn.Module, record: ArrayRecord) -> nn.Module:
    """Load `record` into `model` in place (strict: every key, every shape) and return it."""
    model.load_state_dict(record_to_state(record), strict=True)
    return model


@dataclass(frozen=True)
class Layout:
    """Which state entries form the flat vector, in order, with their shapes and dtypes."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    float_keys: tuple[str, ...]

    @classmethod
    def of(cls, state: dict[str, np.ndarray]) -> Layout:
        """The layout of a state given as numpy arrays."""
        keys = tuple(state)
        return cls(
            keys,
            tuple(tuple(state[k].shape) for k in keys),
            tuple(state[k].dtype for k in keys),
            tuple(k for k in keys if np.issubdtype(state[k].dtype, np.floating)),
        )

    @property
    def size(self) -> int:
        """Length of the flat vector (floating entries only)."""
        return sum(int(np.prod(self.shapes[self.keys.index(k)])) for k in self.float_keys)


class InvalidReply(ValueError):
    """A client's arrays do not match the global model's layout or hold non-finite values."""


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Decode every array of a record (raises InvalidReply on undecodable bytes)."""
    try:
        return {k: a.numpy() for k, a in record.items()}
    except Exception as err:  # garbage bytes from a client: np.load may raise many types
        raise InvalidReply(f"undecodable array: {err}") from None


def flatten_checked(record: ArrayRecord, layout: Layout) -> torch.Tensor:
    """A client's record as a flat float32 vector, once keys, shapes, dtypes, values check."""
    arrays = record_to_numpy(record)
    missing = [k for k in layout.keys if k not in arrays]
    extra = [k for k in arrays if k not in layout.keys]
    if missing or extra:
        raise InvalidReply(f"arrays missing {missing} / unexpected {extra}")
    for k, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        if arrays[k].shape != shape:
            raise InvalidReply(f"array {k!r} has shape {arrays[k].shape}, expected {shape}")
        if arrays[k].dtype != dtype:
            raise InvalidReply(f"array {k!r} has dtype {arrays[k].dtype}, expected {dtype}")
    flat = torch.from_numpy(
        np.concatenate(
            [arrays[k].astype(np.float32, copy=False).ravel() for k in layout.float_keys]
        )
    )
    if not bool(torch.isfinite(flat).all()):
        bad = [k for k in layout.float_keys if not np.isfinite(arrays[k]).all()]
        raise InvalidReply(f"non-finite values (NaN or Inf) in {bad}")
    return flat


def flatten_record(record: ArrayRecord, layout: Layout) -> torch.Tensor:
    """The global model's record as a flat float32 vector (trusted: no checks beyond decoding)."""
    arrays = record_to_numpy(record)
    return torch.from_numpy(
        np.concatenate(
            [arrays[k].astype(np.float32, copy=False).ravel() for k in layout.float_keys]
        )
    )


def unflatten_to_record(flat: torch.Tensor, layout: Layout, template: ArrayRecord) -> ArrayRecord:
    """A new ArrayRecord: the float entries from `flat`, the others copied from `template`."""
    out = ArrayRecord()
    vec = flat.detach().cpu().numpy()
    offset = 0
    for k, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        if k in layout.float_keys:
            n = int(np.prod(shape))
            out[k] = Array(vec[offset : offset + n].reshape(shape).astype(dtype))
            offset += n
        else:
            out[k] = Array(template[k].numpy())
    return out
