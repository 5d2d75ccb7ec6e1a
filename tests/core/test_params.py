"""Model <-> ArrayRecord <-> flat vector, and rejection of malformed client arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from core.models import InputSpec, build_model
from core.params import (
    InvalidReply,
    Layout,
    flatten_checked,
    flatten_record,
    load_record,
    model_to_record,
    record_to_numpy,
    unflatten_to_record,
)

SPEC = InputSpec(3, 16, 16, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _record() -> tuple[torch.nn.Module, ArrayRecord, Layout]:
    model = build_model("cifar-cnn", SPEC, seed=0)  # has BatchNorm: float and int64 buffers
    record = model_to_record(model)
    return model, record, Layout.of(record_to_numpy(record))


def test_round_trip_is_exact_and_int_buffers_come_from_template() -> None:
    model, record, layout = _record()
    assert "0.mean" not in record  # Normalize constants never travel
    assert any(k.endswith("num_batches_tracked") for k in layout.keys)
    assert all(not k.endswith("num_batches_tracked") for k in layout.float_keys)
    flat = flatten_record(record, layout)
    assert flat.shape == (layout.size,)
    back = unflatten_to_record(flat + 1.0, layout, record)
    other = build_model("cifar-cnn", SPEC, seed=1)
    load_record(other, back)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        expected = a + 1.0 if a.is_floating_point() else a
        assert torch.equal(expected, b), k


@pytest.mark.parametrize("defect", ["nan", "inf", "shape", "missing", "extra", "dtype", "garbage"])
def test_malformed_arrays_are_rejected(defect: str) -> None:
    _, record, layout = _record()
    key = layout.float_keys[0]
    arrays = record_to_numpy(record)
    bad = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    if defect == "nan":
        v = arrays[key].copy()
        v.flat[0] = np.nan
        bad[key] = Array(v)
    elif defect == "inf":
        v = arrays[key].copy()
        v.flat[-1] = -np.inf
        bad[key] = Array(v)
    elif defect == "shape":
        bad[key] = Array(arrays[key].reshape(-1))
    elif defect == "missing":
        del bad[key]
    elif defect == "extra":
        bad["evil"] = Array(np.zeros(3, dtype=np.float32))
    elif defect == "dtype":
        bad[key] = Array(arrays[key].astype(np.float64))
    else:
        a = bad[key]
        bad[key] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=b"not numpy")
    with pytest.raises(InvalidReply):
        flatten_checked(bad, layout)


def test_valid_reply_flattens_like_the_global_model() -> None:
    _, record, layout = _record()
    assert torch.equal(flatten_checked(record, layout), flatten_record(record, layout))
