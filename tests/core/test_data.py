"""Datasets and held-out splits on the real files, and the .npz loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import DataConfig
from core.data import DataNotFoundError, load_dataset, load_npz_images, load_splits


def test_mnist_splits_follow_cfat(data_dir: Path) -> None:
    splits = load_splits(DataConfig(dataset="mnist", dir=str(data_dir)))
    assert (len(splits.cert), len(splits.val), len(splits.pool), len(splits.test)) == (
        1000,
        5000,
        54000,
        10000,
    )
    full = load_dataset(DataConfig(dataset="mnist", dir=str(data_dir))).train
    assert torch.equal(splits.cert.x, full.x[:1000])
    assert torch.equal(splits.val.y, full.y[1000:6000])
    assert torch.equal(splits.pool.x[0], full.x[6000])
    assert splits.spec.channels == 1 and splits.spec.num_classes == 10
    x, y = next(splits.cert.batches(8))
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.shape == (8,)


def test_fashion_mnist_loads(data_dir: Path) -> None:
    ds = load_dataset(DataConfig(dataset="fashion-mnist", dir=str(data_dir)))
    assert len(ds.train) == 60000 and torch.bincount(ds.test.y).tolist() == [1000] * 10


def test_missing_files_name_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(DataConfig(dataset="mnist", dir=str(tmp_path)))
    assert "train-images-idx3-ubyte.gz" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(DataNotFoundError, match="cifar10.npz"):
        load_dataset(DataConfig(dataset="cifar10", dir=str(tmp_path)))


def test_npz_images_hwc_to_nchw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(
        path, x_train=x_train, y_train=np.arange(20) % 4, x_test=x_train[:5], y_test=np.arange(5)
    )
    train, test = load_npz_images(path)
    assert train.x.shape == (20, 3, 8, 8) and torch.equal(
        train.x[3, 1], torch.from_numpy(x_train[3, :, :, 1])
    )
    ds = load_dataset(
        DataConfig(dataset="npz", dir=str(tmp_path), npz_path="tiny.npz", n_cert=2, n_val=2)
    )
    assert ds.spec.num_classes == 5 and len(ds.spec.mean) == 3


def test_splits_refuse_to_leave_clients_nothing(tmp_path: Path) -> None:
    x = np.zeros((10, 4, 4), dtype=np.uint8)
    np.savez(
        tmp_path / "t.npz",
        x_train=x,
        y_train=np.zeros(10, dtype=np.int64),
        x_test=x,
        y_test=np.zeros(10, dtype=np.int64),
    )
    with pytest.raises(ValueError, match="leave no training data"):
        load_splits(
            DataConfig(dataset="npz", dir=str(tmp_path), npz_path="t.npz", n_cert=5, n_val=5)
        )
