"""Datasets as compact uint8 tensors, the held-out splits of CFAT Sec. 5, and batch iteration.

Images are kept as uint8 `(N, C, H, W)` and turned into float batches in [0, 1] on the fly, so a
process holds each dataset once (MNIST: 47 MB) however many virtual clients it serves.

Data directory: run config `data.dir`, else the `CERTFL_DATA` environment variable, else `./data`
(resolved when the config is parsed).
Expected layout (torchvision's, as in `../shared/data`):
    MNIST/raw/*-ubyte.gz, FashionMNIST/raw/*-ubyte.gz,
    cifar10/cifar10.npz (x_train, y_train, x_test, y_test, HWC uint8) or cifar-10-batches-py/.
torchvision needs a writable root to extract the .gz files, so they are symlinked into a cache
(`CERTFL_CACHE`, default ~/.cache/certfl) and never written next to the originals.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import DataConfig
from core.models import InputSpec
from core.seeds import torch_generator


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 `(N, C, H, W)` plus int64 labels; indexing returns views, not copies."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(
                f"ImageSet.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"ImageSet.y must have shape ({self.x.shape[0]},), got {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor | slice) -> ImageSet:
        """The images at `index` (a slice gives a view, an index tensor a gather)."""
        return ImageSet(self.x[index], self.y[index])

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one float batch in [0, 1] and their labels."""
        return to_float(self.x).to(device), self.y.to(device)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float batches in [0, 1]; shuffled with `generator` when asked."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield to_float(self.x[idx]).to(device), self.y[idx].to(device)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return x.to(torch.float32).div_(255.0)


@dataclass(frozen=True)
class Dataset:
    """A dataset's train and test sets with its input spec."""

    name: str
    spec: InputSpec
    train: ImageSet
    test: ImageSet


@dataclass(frozen=True)
class Splits:
    """CFAT Sec. 5: certification set, validation set, the clients' pool, and the test set."""

    cert: ImageSet
    val: ImageSet
    pool: ImageSet
    test: ImageSet
    spec: InputSpec


_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10}
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are not where the config says, and downloading is off."""


def data_dir(cfg: DataConfig) -> Path:
    """The data directory `data.dir` (its "" resolved when the config was parsed)."""
    return Path(cfg.dir)


def cache_dir() -> Path:
    """A writable cache for extracted files: $CERTFL_CACHE, else ~/.cache/certfl."""
    root = os.environ.get("CERTFL_CACHE") or Path.home() / ".cache" / "certfl"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached_sets(
    tag: str, sources: list[Path], load: Callable[[], tuple[ImageSet, ImageSet]]
) -> tuple[ImageSet, ImageSet]:
    """`load()`'s train and test sets, saved once as tensors in the cache keyed by the sources.

    Later processes (every ClientApp process of a deployment) read the tensors back in
    milliseconds instead of importing torchvision or decompressing again.
    """
    stamp = "-".join(f"{p.stat().st_size}.{int(p.stat().st_mtime)}" for p in sources)
    cached = cache_dir() / "tensors" / f"{tag}-{stamp}.pt"
    if cached.is_file():
        arrays = torch.load(cached)
        return ImageSet(*arrays["train"]), ImageSet(*arrays["test"])
    train, test = load()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train": (train.x, train.y), "test": (test.x, test.y)}, tmp)
    tmp.replace(cached)
    return train, test


def _load_mnist_like(name: str, root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """MNIST or Fashion-MNIST: torchvision on .gz files symlinked into the cache, then tensors."""
    folder = _TORCHVISION_FOLDERS[name]
    raw = root / folder / "raw"
    missing = [f for f in _MNIST_FILES if not (raw / f).is_file()]
    if missing and not download:
        raise DataNotFoundError(
            f"{name}: missing {', '.join(missing)} in {raw}. Put torchvision's original .gz "
            "files there (e.g. point data.dir or CERTFL_DATA at ../shared/data), or set "
            "data.download=true to let torchvision fetch them."
        )
    if missing:
        return _torchvision_mnist(name, raw)
    return _cached_sets(
        name, [raw / f for f in _MNIST_FILES], lambda: _torchvision_mnist(name, raw)
    )


def _torchvision_mnist(name: str, raw: Path) -> tuple[ImageSet, ImageSet]:
    """Let torchvision check the MD5s and extract (or download) into the cache."""
    import torchvision

    cache_root = cache_dir() / "torchvision"
    cache_raw = cache_root / _TORCHVISION_FOLDERS[name] / "raw"
    cache_raw.mkdir(parents=True, exist_ok=True)
    for f in _MNIST_FILES:
        link = cache_raw / f
        if (raw / f).is_file() and not link.exists():
            with contextlib.suppress(FileExistsError):  # another process linked it first
                link.symlink_to(raw / f)
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    sets = []
    for train in (True, False):
        ds = cls(str(cache_root), train=train, download=True)
        sets.append(ImageSet(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    return sets[0], sets[1]


def _hwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    """HWC (or HW) uint8 images -> a contiguous uint8 (N, C, H, W) tensor."""
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_npz_images(path: Path) -> tuple[ImageSet, ImageSet]:
    """An .npz with x_train, y_train, x_test, y_test (HWC or HW uint8), decompressed once."""
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found: expected an .npz holding x_train, y_train, x_test, y_test"
        )

    def load() -> tuple[ImageSet, ImageSet]:
        with np.load(path) as npz:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(npz.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)}; has {npz.files}")
            train = ImageSet(_hwc_to_nchw(npz["x_train"]), torch.from_numpy(npz["y_train"]).long())
            test = ImageSet(_hwc_to_nchw(npz["x_test"]), torch.from_numpy(npz["y_test"]).long())
        return train, test

    return _cached_sets(f"npz-{path.stem}", [path], load)


def _load_cifar10(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 from cifar10/cifar10.npz, else torchvision's cifar-10-batches-py layout."""
    npz = root / "cifar10" / "cifar10.npz"
    if npz.is_file():
        return load_npz_images(npz)
    import torchvision

    if not (root / "cifar-10-batches-py").is_dir() and not download:
        raise DataNotFoundError(
            f"cifar10: neither {npz} nor {root / 'cifar-10-batches-py'} exists; point data.dir "
            "or CERTFL_DATA at a folder holding one, or set data.download=true."
        )
    target = root if (root / "cifar-10-batches-py").is_dir() else cache_dir() / "torchvision"
    sets = []
    for train in (True, False):
        ds = torchvision.datasets.CIFAR10(str(target), train=train, download=download)
        sets.append(ImageSet(_hwc_to_nchw(ds.data), torch.tensor(ds.targets).long()))
    return sets[0], sets[1]


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, for datasets without published constants."""
    xf = to_float(x[:10000])
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


_DATASETS: dict[tuple[str, str], Dataset] = {}
_LOCK = threading.Lock()


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load (once per process) the dataset `cfg` names."""
    root = data_dir(cfg)
    key = (cfg.dataset, str(root / cfg.npz_path) if cfg.dataset == "npz" else str(root))
    with _LOCK:
        if key not in _DATASETS:
            _DATASETS[key] = _load(cfg, root)
        return _DATASETS[key]


def _load(cfg: DataConfig, root: Path) -> Dataset:
    if cfg.dataset in _TORCHVISION_FOLDERS:
        train, test = _load_mnist_like(cfg.dataset, root, cfg.download)
    elif cfg.dataset == "cifar10":
        train, test = _load_cifar10(root, cfg.download)
    else:
        if not cfg.npz_path:
            raise DataNotFoundError("data.dataset = 'npz' needs data.npz-path (an .npz file)")
        train, test = load_npz_images(root / cfg.npz_path)
    mean, std = _STATS[cfg.dataset] if cfg.dataset in _STATS else _channel_stats(train.x)
    classes = int(max(train.y.max(), test.y.max())) + 1
    _, c, h, w = train.x.shape
    spec = InputSpec(c, h, w, classes, mean, std)
    return Dataset(cfg.dataset, spec, train, test)


def num_classes(cfg: DataConfig) -> int:
    """The number of classes of `cfg`'s dataset: known for the built-in ones, read from the
    labels (loading the file) for an npz."""
    if cfg.dataset in _NUM_CLASSES:
        return _NUM_CLASSES[cfg.dataset]
    return load_dataset(cfg).spec.num_classes


def test_order(n: int, seed: int) -> torch.Tensor:
    """The run's seeded order of the `n` test points: the central evaluation subset is its head
    (server/evaluation.py), auxiliary sets that must stay out of it are taken from its tail."""
    return torch.randperm(n, generator=torch_generator(seed, "eval-subset"))


def load_splits(cfg: DataConfig) -> Splits:
    """Certification set = first N_cert training points, validation = next N_val, pool = rest."""
    ds = load_dataset(cfg)
    n_cert = cfg.n_cert
    if n_cert + cfg.n_val >= len(ds.train):
        raise ValueError(
            f"data.n-cert ({n_cert}) + data.n-val ({cfg.n_val}) leave no training data for the "
            f"clients: {cfg.dataset} has {len(ds.train)} training points"
        )
    cert = ds.train.subset(slice(0, n_cert))
    val = ds.train.subset(slice(n_cert, n_cert + cfg.n_val))
    pool = ds.train.subset(slice(n_cert + cfg.n_val, None))
    return Splits(cert, val, pool, ds.test, ds.spec)
