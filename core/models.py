"""Model registry: every network the papers use, built by name as a traceable module.

Models meant for certification (`conv-small`, `conv-med`, `conv-big`, `cifar-cnn`, `mlp`) are
`nn.Sequential` chains of Normalize, Conv2d, ReLU, Flatten, Linear (and optionally AvgPool2d /
BatchNorm), so the certifier in `certify/` can trace them module by module. The FL-WBC networks
keep their MaxPool2d layers and MobileNetV2 is torchvision's, as in the papers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from certify import Transformer, register
from certify.domains import Domain
from certify.fp import Rounding


class Normalize(nn.Module):
    """Per-channel input normalisation (x - mean) / std, the first layer of every model.

    The constants are non-persistent buffers: they are not part of the state_dict, so clients
    never send them and an aggregator can never change them.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"Normalize: mean has {len(mean)} channels, std {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: every std must be > 0, got {list(std)}")
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


@register(Normalize)
class NormalizeTransformer(Transformer):
    """The certifier's transformer for Normalize, registered beside the layer it abstracts so
    that `certify/` needs to know no model of ours: (x - mean) / std is exact on zonotopes."""

    def apply(self, module: Normalize, x: Domain) -> Domain:
        std, mean = module.std.to(x.center.dtype), module.mean.to(x.center.dtype)
        return x.elementwise(1 / std, -mean / std)

    def rounding(self, module: Normalize, mag: torch.Tensor, r: Rounding) -> torch.Tensor:
        std, mean = module.std.to(mag.dtype), module.mean.to(mag.dtype)
        return r.affine(2) * (mag + mean.abs()) / std


@dataclass(frozen=True)
class InputSpec:
    """Shape and normalisation of a dataset's inputs, which fix a model's first layers."""

    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _flat_size(body: nn.Module, spec: InputSpec) -> int:
    """Number of features after `body` for one input of `spec`'s shape (traced, not guessed)."""
    with torch.no_grad():
        out = body(torch.zeros(1, spec.channels, spec.height, spec.width))
    return int(out.flatten(1).shape[1])


def _conv_head(spec: InputSpec, features: list[nn.Module], hidden: Sequence[int]) -> nn.Sequential:
    """Normalize -> conv features -> Flatten -> ReLU-separated fully connected layers."""
    body = nn.Sequential(*features)
    layers: list[nn.Module] = [Normalize(spec.mean, spec.std), *features, nn.Flatten()]
    width = _flat_size(body, spec)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, spec.num_classes))
    return nn.Sequential(*layers)


def conv_small(spec: InputSpec) -> nn.Module:
    """ERAN ConvSmall: Conv16(4x4, s2)-ReLU-Conv32(4x4, s2)-ReLU-FC100-ReLU-FC."""
    channels = spec.channels
    return _conv_head(
        spec,
        [
            nn.Conv2d(channels, 16, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2),
            nn.ReLU(),
        ],
        [100],
    )


def conv_med(spec: InputSpec) -> nn.Module:
    """ConvMed, larger than ConvSmall: Conv32(5x5, s2, p2)-Conv64(4x4, s2, p1)-FC200-FC100-FC."""
    channels = spec.channels
    return _conv_head(
        spec,
        [
            nn.Conv2d(channels, 32, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.ReLU(),
        ],
        [200, 100],
    )


def conv_big(spec: InputSpec) -> nn.Module:
    """ERAN ConvBig: Conv32(3)-Conv32(4, s2)-Conv64(3)-Conv64(4, s2)-FC512-FC512-FC."""
    channels = spec.channels
    return _conv_head(
        spec,
        [
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1),
            nn.ReLU(),
        ],
        [512, 512],
    )


def cifar_cnn(spec: InputSpec) -> nn.Module:
    """CIFAR conv net with BatchNorm and average pooling, all layers the certifier supports."""
    channels = spec.channels
    return _conv_head(
        spec,
        [
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AvgPool2d(2),
        ],
        [256],
    )


def mlp(spec: InputSpec) -> nn.Module:
    """Two hidden layers of 100 units: the smallest network, for fast tests."""
    return _conv_head(spec, [], [100, 100])


def fl_wbc_fmnist(spec: InputSpec) -> nn.Module:
    """FL-WBC Table 3 (Fashion-MNIST): Conv16(5x5, p2)-Pool-Conv32(5x5, p2)-Pool-FC."""
    channels = spec.channels
    return _conv_head(
        spec,
        [
            nn.Conv2d(channels, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ],
        [],
    )


def fl_wbc_lenet(spec: InputSpec) -> nn.Module:
    """FL-WBC Table 3 (CIFAR-10 LeNet): Conv6(5x5)-Pool-Conv16(5x5)-Pool-FC120-FC84-FC."""
    channels = spec.channels
    return _conv_head(
        spec,
        [
            nn.Conv2d(channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ],
        [120, 84],
    )


def mobilenet_v2(spec: InputSpec) -> nn.Module:
    """torchvision MobileNetV2 (ARU's model) behind our input normalisation."""
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    net = tv_mobilenet_v2(weights=None, num_classes=spec.num_classes)
    if spec.channels != 3:
        first = net.features[0][0]
        net.features[0][0] = nn.Conv2d(
            spec.channels, first.out_channels, 3, stride=first.stride, padding=1, bias=False
        )
    return nn.Sequential(Normalize(spec.mean, spec.std), net)


MODELS: dict[str, Callable[[InputSpec], nn.Module]] = {
    "conv-small": conv_small,
    "conv-med": conv_med,
    "conv-big": conv_big,
    "cifar-cnn": cifar_cnn,
    "mlp": mlp,
    "fl-wbc-fmnist": fl_wbc_fmnist,
    "fl-wbc-lenet": fl_wbc_lenet,
    "mobilenet-v2": mobilenet_v2,
}


def build_model(name: str, spec: InputSpec, seed: int | None = None) -> nn.Module:
    """Build the registered model `name` for inputs of `spec`; `seed` makes the init repeatable."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    if seed is None:
        return factory(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(spec)
