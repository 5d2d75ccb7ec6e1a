"""The edge-case sets of Attack of the Tails (Wang et al. 2020, Sec. 4), read from the data dir.

MNIST: ARDIS handwritten '7's labelled '1' (`edge_case/ardis/ardis.npz`); CIFAR-10: Southwest
Airlines planes labelled 'truck' (`edge_case/southwest/southwest.npz`). Both are plain .npz
archives (see `edge_case/README.md` in the shared data). The attacker trains on `train`; the
target accuracy is the share of `test` the global model assigns to `target`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from core.config import DataConfig
from core.data import DataNotFoundError, ImageSet, data_dir


@dataclass(frozen=True)
class EdgeCaseSource:
    """Where a dataset's edge-case images live and which label the attacker gives them."""

    file: str  # relative to <data dir>/edge_case
    train_key: str
    test_key: str
    target: int
    # the authors' attacker set: this many edge-case images, this share of the attacker's data
    samples: int
    fraction: float
    # keep only images of this true label, read from these label arrays (ARDIS has all digits)
    source_class: int | None = None
    label_keys: tuple[str, str] = ("", "")


EDGE_CASE_SOURCES = {
    # poisoned_dataset_fraction_0.1: 100 EMNIST digits + 66 ARDIS '7's labelled '1'
    "mnist": EdgeCaseSource(
        "ardis/ardis.npz", "x_train", "x_test", 1, 66, 66 / 166, 7, ("y_train", "y_test")
    ),
    # the authors' code: 100 of the 784 Southwest images + 400 CIFAR-10 images
    "cifar10": EdgeCaseSource("southwest/southwest.npz", "new_train", "new_test", 9, 100, 0.2),
}


@dataclass(frozen=True)
class EdgeCaseSet:
    """The edge-case training images and the held-out test images, all labelled `target`."""

    train: ImageSet
    test: ImageSet
    target: int


def load_edge_case(cfg: DataConfig) -> EdgeCaseSet:
    """The edge-case set of `cfg`'s dataset; DataNotFoundError naming the path if it is absent."""
    source = EDGE_CASE_SOURCES.get(cfg.dataset)
    if source is None:
        raise DataNotFoundError(
            f"data.dataset = {cfg.dataset!r} has no edge-case set; "
            f"available for: {', '.join(sorted(EDGE_CASE_SOURCES))}"
        )
    path = data_dir(cfg) / "edge_case" / source.file
    if not path.is_file():
        raise DataNotFoundError(
            f"edge-case data {path} not found: put the Attack of the Tails archive there "
            "(see edge_case/README.md in the shared data), or point data.dir / CERTFL_DATA at it"
        )
    return _load(str(path), source)


@functools.lru_cache(maxsize=4)
def _load(path: str, source: EdgeCaseSource) -> EdgeCaseSet:
    """Read and convert one archive once per process."""
    keys = (source.train_key, source.test_key)
    with np.load(path) as npz:
        needed = set(keys) | ({*source.label_keys} if source.source_class is not None else set())
        missing = needed - set(npz.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}; has {npz.files}")
        train, test = (npz[k] for k in keys)
        if source.source_class is not None:
            train_y, test_y = (npz[k] for k in source.label_keys)
            train, test = train[train_y == source.source_class], test[test_y == source.source_class]
    target = source.target
    return EdgeCaseSet(_labelled(train, target), _labelled(test, target), target)


def _labelled(images: np.ndarray, target: int) -> ImageSet:
    """(N, H, W) or (N, H, W, C) uint8 images as an NCHW ImageSet, every label `target`."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return ImageSet(x.contiguous(), torch.full((x.shape[0],), target, dtype=torch.int64))
