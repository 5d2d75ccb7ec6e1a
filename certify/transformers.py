"""Abstract transformers, one class per layer type, found by the module's exact type.

Each transformer knows three things about its layer: whether a module's settings are supported
(`check`, at trace time, before any work), its abstract semantics on any `Domain` (`apply`), and
how much rounding error its output may carry (`rounding`, for `sound_fp`). Parameters are cast to
the domain's dtype inside `apply`, so gradients reach the model's own parameters and a float64
analysis needs no copy of the model. Modules are certified with their eval-mode semantics
(BatchNorm running statistics, Dropout off).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from certify.blocks import Pair
from certify.domains import Domain
from certify.fp import Rounding


class UnsupportedModuleError(TypeError):
    """A module the certifier has no sound transformer for, named with its position."""


class Transformer:
    """Abstract semantics of one layer type; subclasses are registered with `register`."""

    def check(self, module: nn.Module) -> str | None:
        """Why this module's settings are unsupported, or None when they are fine."""
        return None

    def apply(self, module: nn.Module, x: Domain) -> Domain:
        raise NotImplementedError

    def rounding(self, module: nn.Module, mag: torch.Tensor, r: Rounding) -> torch.Tensor | None:
        """Per-output bound on the rounding error this layer adds, given a bound `mag` on the
        magnitude of its inputs; None when the layer computes exactly (reshapes)."""
        raise NotImplementedError


TRANSFORMERS: dict[type[nn.Module], Transformer] = {}


def register(*types: type[nn.Module]) -> Callable[[type[Transformer]], type[Transformer]]:
    """Class decorator: use this transformer for modules of exactly these types."""

    def add(cls: type[Transformer]) -> type[Transformer]:
        for t in types:
            TRANSFORMERS[t] = cls()
        return cls

    return add


def transformer_for(module: nn.Module, position: str) -> Transformer:
    """The registered transformer of `module`, or UnsupportedModuleError naming it and where."""
    t = TRANSFORMERS.get(type(module))
    reason = "no abstract transformer is registered for it" if t is None else t.check(module)
    if reason is not None:
        known = ", ".join(sorted(k.__name__ for k in TRANSFORMERS))
        raise UnsupportedModuleError(
            f"cannot certify layer {position} ({type(module).__name__}: {module}): {reason}. "
            f"Supported: {known}, and nn.Sequential of them."
        )
    assert t is not None
    return t


def _pair(v: int | tuple[int, ...]) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _cast(t: torch.Tensor | None, x: Domain) -> torch.Tensor | None:
    return None if t is None else t.to(x.center.dtype)


def _affine_rounding(
    out_abs: torch.Tensor, bias: torch.Tensor | None, n: int, r: Rounding
) -> torch.Tensor:
    """gamma_{n+1} (|W| mag + |b|): error of an n-term dot product plus a bias."""
    kappa = r.affine(n + (bias is not None))
    if bias is None:
        return kappa * out_abs
    return kappa * (out_abs + bias.detach().abs().view(1, -1, *[1] * (out_abs.dim() - 2)))


@register(nn.Linear)
class LinearT(Transformer):
    """x W^T + b on flat inputs."""

    def apply(self, module: nn.Linear, x: Domain) -> Domain:
        if x.center.dim() != 2:
            raise UnsupportedModuleError(f"Linear needs flat inputs, got {tuple(x.center.shape)}")
        return x.linear(_cast(module.weight, x), _cast(module.bias, x))

    def rounding(self, module: nn.Linear, mag, r):
        w = module.weight.detach().to(mag.dtype).abs()
        return _affine_rounding(F.linear(mag, w), module.bias, w.shape[1], r)


def _conv_padding(module: nn.Conv2d) -> Pair | None:
    """Symmetric zero padding of a Conv2d as a pair, or None when it is asymmetric."""
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        k = _pair(module.kernel_size)
        return None if any(v % 2 == 0 for v in k) else ((k[0] - 1) // 2, (k[1] - 1) // 2)
    return _pair(module.padding)


@register(nn.Conv2d)
class Conv2dT(Transformer):
    """2-D convolution with symmetric zero padding, any stride and groups, dilation 1."""

    def check(self, module: nn.Conv2d) -> str | None:
        if _pair(module.dilation) != (1, 1):
            return f"dilation {module.dilation} is not supported (only 1)"
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r} is not supported (only 'zeros')"
        if _conv_padding(module) is None:
            return "padding='same' with an even kernel pads asymmetrically, which is unsupported"
        return None

    def apply(self, module: nn.Conv2d, x: Domain) -> Domain:
        if x.center.dim() != 4:
            raise UnsupportedModuleError(
                f"Conv2d needs (C, H, W) inputs, got {tuple(x.center.shape)}"
            )
        w, b = _cast(module.weight, x), _cast(module.bias, x)
        return x.conv(w, b, _pair(module.stride), _conv_padding(module), module.groups)

    def rounding(self, module: nn.Conv2d, mag, r):
        w = module.weight.detach().to(mag.dtype).abs()
        stride, padding = _pair(module.stride), _conv_padding(module)
        out_abs = F.conv2d(mag, w, None, stride, padding, 1, module.groups)
        return _affine_rounding(out_abs, module.bias, w[0].numel(), r)


@register(nn.ReLU)
class ReLUT(Transformer):
    """max(x, 0): DeepZono for the zonotope, clamping for the interval."""

    def apply(self, module: nn.ReLU, x: Domain) -> Domain:
        return x.relu()

    def rounding(self, module, mag, r):
        # relu is exact in float32; only the analysis' slopes and offsets round.
        return r.analysis(8) * mag


@register(nn.Flatten)
class FlattenT(Transformer):
    """Flatten everything but the batch dimension."""

    def check(self, module: nn.Flatten) -> str | None:
        if (module.start_dim, module.end_dim) != (1, -1):
            return "only Flatten(start_dim=1, end_dim=-1) is supported"
        return None

    def apply(self, module: nn.Flatten, x: Domain) -> Domain:
        return x.flatten()

    def rounding(self, module, mag, r):
        return None


@register(nn.Identity, nn.Dropout, nn.Dropout2d)
class IdentityT(Transformer):
    """Identity, and Dropout in eval mode."""

    def apply(self, module: nn.Module, x: Domain) -> Domain:
        return x

    def rounding(self, module, mag, r):
        return None


def _channel_view(v: torch.Tensor, x: Domain) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over `(B, C, ...)`."""
    return v.reshape(1, -1, *[1] * (x.center.dim() - 2))


def _bn_affine(module: nn.modules.batchnorm._BatchNorm, dtype: torch.dtype):
    """Eval-mode BatchNorm as scale and shift per channel (float64 math, cast to dtype)."""
    var = module.running_var.to(torch.float64)
    weight = torch.ones_like(var) if module.weight is None else module.weight.to(torch.float64)
    bias = torch.zeros_like(var) if module.bias is None else module.bias.to(torch.float64)
    scale = weight / torch.sqrt(var + module.eps)
    shift = bias - module.running_mean.to(torch.float64) * scale
    return scale.to(dtype), shift.to(dtype)


@register(nn.BatchNorm1d, nn.BatchNorm2d)
class BatchNormT(Transformer):
    """Eval-mode BatchNorm: a per-channel affine map with the running statistics."""

    def check(self, module: nn.modules.batchnorm._BatchNorm) -> str | None:
        if module.running_mean is None or module.running_var is None:
            return "track_running_stats=False uses batch statistics even in eval mode"
        return None

    def apply(self, module: nn.modules.batchnorm._BatchNorm, x: Domain) -> Domain:
        want = 4 if isinstance(module, nn.BatchNorm2d) else 2
        if x.center.dim() != want:
            raise UnsupportedModuleError(
                f"{type(module).__name__} got inputs of shape {tuple(x.center.shape)}"
            )
        scale, shift = _bn_affine(module, x.center.dtype)
        return x.elementwise(_channel_view(scale, x), _channel_view(shift, x))

    def rounding(self, module, mag, r):
        scale, shift = (v.detach() for v in _bn_affine(module, mag.dtype))
        s = scale.abs().reshape(1, -1, *[1] * (mag.dim() - 2))
        mean = module.running_mean.to(mag.dtype).abs().reshape(s.shape)
        # torch rounds alpha = w / sqrt(var + eps), beta = b - mean * alpha, y = x * alpha + beta;
        # |beta| + 2 |mean alpha| covers |b| + |mean alpha| and the error of beta itself.
        return r.affine(8) * (s * mag + shift.abs().reshape(s.shape) + 2 * mean * s)


@register(nn.AvgPool2d)
class AvgPool2dT(Transformer):
    """Average pooling as a depthwise convolution with weights 1 / (kernel area)."""

    def check(self, module: nn.AvgPool2d) -> str | None:
        if module.ceil_mode:
            return "ceil_mode=True is not supported"
        if _pair(module.padding) != (0, 0) and not module.count_include_pad:
            return "padding with count_include_pad=False divides border windows unevenly"
        return None

    def _weight(self, module: nn.AvgPool2d, channels: int, dtype: torch.dtype) -> torch.Tensor:
        kh, kw = _pair(module.kernel_size)
        div = module.divisor_override or kh * kw
        return torch.full((channels, 1, kh, kw), 1.0 / div, dtype=dtype)

    def apply(self, module: nn.AvgPool2d, x: Domain) -> Domain:
        if x.center.dim() != 4:
            raise UnsupportedModuleError(
                f"AvgPool2d needs (C, H, W) inputs, got {tuple(x.center.shape)}"
            )
        c = x.center.shape[1]
        w = self._weight(module, c, x.center.dtype).to(x.center.device)
        return x.conv(w, None, _pair(module.stride), _pair(module.padding), c)

    def rounding(self, module, mag, r):
        c = mag.shape[1]
        w = self._weight(module, c, mag.dtype).to(mag.device)
        out_abs = F.conv2d(mag, w, None, _pair(module.stride), _pair(module.padding), 1, c)
        return _affine_rounding(out_abs, None, w[0].numel(), r)


@register(nn.MaxPool2d)
class MaxPool2dT(Transformer):
    """DeepZ max pooling: exact where one input dominates its window, else a fresh box."""

    def check(self, module: nn.MaxPool2d) -> str | None:
        if module.ceil_mode or module.return_indices or _pair(module.dilation) != (1, 1):
            return "only ceil_mode=False, return_indices=False and dilation=1 are supported"
        return None

    def _args(self, module: nn.MaxPool2d) -> tuple[Pair, Pair, Pair]:
        return _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)

    def apply(self, module: nn.MaxPool2d, x: Domain) -> Domain:
        if x.center.dim() != 4:
            raise UnsupportedModuleError(
                f"MaxPool2d needs (C, H, W) inputs, got {tuple(x.center.shape)}"
            )
        return x.maxpool(*self._args(module))

    def rounding(self, module, mag, r):
        # max is exact in float32; only the analysis' box midpoints round.
        return r.analysis(2) * F.max_pool2d(mag, *self._args(module))
