"""Abstract domains: the zonotope (DeepZono, Singh et al. 2018) and the interval (IBP).

Both domains answer the same small API, so a layer transformer is written once for both:
`elementwise`, `conv`, `linear`, `flatten`, `relu`, `maxpool`, `bounds`, `margin_upper`. Every
operation returns a new value; batch dimension first, one abstract element per sample.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol, Self

import torch
import torch.nn.functional as F

from certify.blocks import Block, Dense, Pair, Patches, Sparse


class Domain(Protocol):
    """What a layer transformer may ask of an abstract element (a batch of them)."""

    center: torch.Tensor

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> Self: ...
    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Self: ...
    def conv(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Pair,
        padding: Pair,
        groups: int,
    ) -> Self: ...
    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> Self: ...
    def flatten(self) -> Self: ...
    def relu(self) -> Self: ...
    def maxpool(self, kernel: Pair, stride: Pair, padding: Pair) -> Self: ...
    def margin_upper(self, y: torch.Tensor) -> torch.Tensor: ...
    def add_box(self, radius: torch.Tensor) -> Self: ...
    def numel(self) -> int: ...


def _windows(
    x: torch.Tensor, kernel: Pair, stride: Pair, padding: Pair, fill: float
) -> torch.Tensor:
    """Pooling windows of `(N, C, H, W)` as `(N, C, kh*kw, Ho, Wo)`, padded with `fill`."""
    n, c, h, w = x.shape
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=fill)
    cols = F.unfold(x.reshape(n * c, 1, *x.shape[2:]), kernel, stride=stride)
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    return cols.view(n, c, kernel[0] * kernel[1], ho, -1)


@dataclass(frozen=True)
class Zonotope:
    """x = center + sum_i g_i e_i, e_i in [-1, 1], with the generators kept in blocks."""

    center: torch.Tensor  # (B, *shape)
    blocks: tuple[Block, ...]

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> Zonotope:
        """The box [lo, hi]: one symbol per element (zero where lo == hi)."""
        return cls((lo + hi) / 2, (Patches.diagonal((hi - lo) / 2),))

    def radius(self) -> torch.Tensor:
        r = torch.zeros_like(self.center)
        for block in self.blocks:
            r = r + block.radius().reshape(self.center.shape)
        return r

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._bounds

    @functools.cached_property
    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Computed once per value (the ReLU and the rounding bound both ask)."""
        r = self.radius()
        return self.center - r, self.center + r

    def elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Zonotope:
        """x * scale + shift with scale, shift broadcastable to the center."""
        s = scale.expand(scale.shape[0], *self.shape)
        return Zonotope(self.center * scale + shift, tuple(b.scale(s) for b in self.blocks))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.center.shape[1:])

    def conv(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Pair,
        padding: Pair,
        groups: int,
    ) -> Zonotope:
        center = F.conv2d(self.center, weight, bias, stride, padding, 1, groups)
        return Zonotope(center, tuple(b.conv(weight, stride, padding, groups) for b in self.blocks))

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> Zonotope:
        center = F.linear(self.center, weight, bias)
        return Zonotope(center, tuple(b.linear(weight) for b in self.blocks))

    def flatten(self) -> Zonotope:
        """Only the center changes shape: blocks keep their natural (traced) layout."""
        return Zonotope(self.center.flatten(1), self.blocks)

    def relu(self) -> Zonotope:
        """DeepZono: for l < 0 < u, y = lam x + mu + mu e_new with lam = u / (u - l),
        mu = -lam l / 2; u <= 0 gives 0 and l >= 0 the identity."""
        lo, hi = self.bounds()
        crossing = (lo < 0) & (hi > 0)
        dead = hi <= 0
        lam = torch.where(crossing, hi / torch.where(crossing, hi - lo, 1.0), (~dead).to(hi.dtype))
        mu = torch.where(crossing, -lam * lo / 2, 0.0)
        blocks = tuple(b.scale(lam) for b in self.blocks) + (Sparse.nonzeros(mu),)
        return Zonotope(self.center * lam + mu, blocks)

    def maxpool(self, kernel: Pair, stride: Pair, padding: Pair) -> Zonotope:
        """DeepZ max pooling: a window whose largest lower bound beats every other upper bound
        passes that input on exactly; any other window becomes a fresh box [max l, max u]."""
        lo, hi = self.bounds()
        lw = _windows(lo, kernel, stride, padding, float("-inf"))
        uw = _windows(hi, kernel, stride, padding, float("-inf"))
        best_lo, win = lw.max(2, keepdim=True)
        others_hi = uw.scatter(2, win, float("-inf")).amax(2)
        exact = (best_lo.squeeze(2) >= others_hi).to(lo.dtype)
        box_lo, box_hi = best_lo.squeeze(2), uw.amax(2)

        picked = _windows(self.center, kernel, stride, padding, 0.0).gather(2, win).squeeze(2)
        center = exact * picked + (1 - exact) * (box_lo + box_hi) / 2
        blocks = []
        for block in self.blocks:
            coef = block.dense().values()
            b, g = coef.shape[:2]
            picked = _windows(coef.reshape(b * g, *coef.shape[2:]), kernel, stride, padding, 0.0)
            picked = picked.view(b, g, *picked.shape[1:])
            index = win.unsqueeze(1).expand(-1, g, -1, -1, -1, -1)
            blocks.append(Dense(picked.gather(3, index).squeeze(3) * exact.unsqueeze(1)))
        blocks.append(Sparse.nonzeros((1 - exact) * (box_hi - box_lo) / 2))
        return Zonotope(center, tuple(blocks))

    def margin_upper(self, y: torch.Tensor) -> torch.Tensor:
        """Upper bound of z_q - z_y for every class q, on the difference zonotope: `(B, C)`."""
        idx = y.view(-1, 1)
        upper = self.center - self.center.gather(1, idx)
        for block in self.blocks:
            coef = block.dense().values()
            coef = coef.reshape(coef.shape[0], -1, self.center.shape[1])
            diff = coef - coef.gather(2, idx.unsqueeze(1).expand(-1, coef.shape[1], -1))
            upper = upper + diff.abs().sum(1)
        return upper

    def add_box(self, radius: torch.Tensor) -> Zonotope:
        """Widen every neuron by an independent +-radius (fresh symbols), e.g. rounding error."""
        return Zonotope(self.center, (*self.blocks, Patches.diagonal(radius)))

    def numel(self) -> int:
        return self.center.numel() + sum(b.numel() for b in self.blocks)


@dataclass(frozen=True)
class Interval:
    """The box center +- radius (interval bound propagation, Gowal et al. 2018)."""

    center: torch.Tensor
    radius: torch.Tensor

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        return cls((lo + hi) / 2, (hi - lo) / 2)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.center - self.radius, self.center + self.radius

    def elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Interval:
        return Interval(self.center * scale + shift, self.radius * scale.abs())

    def conv(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Pair,
        padding: Pair,
        groups: int,
    ) -> Interval:
        center = F.conv2d(self.center, weight, bias, stride, padding, 1, groups)
        radius = F.conv2d(self.radius, weight.abs(), None, stride, padding, 1, groups)
        return Interval(center, radius)

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> Interval:
        return Interval(F.linear(self.center, weight, bias), F.linear(self.radius, weight.abs()))

    def flatten(self) -> Interval:
        return Interval(self.center.flatten(1), self.radius.flatten(1))

    def relu(self) -> Interval:
        lo, hi = self.bounds()
        return self.from_box(lo.clamp_min(0), hi.clamp_min(0))

    def maxpool(self, kernel: Pair, stride: Pair, padding: Pair) -> Interval:
        lo, hi = self.bounds()
        return self.from_box(
            F.max_pool2d(lo, kernel, stride, padding), F.max_pool2d(hi, kernel, stride, padding)
        )

    def margin_upper(self, y: torch.Tensor) -> torch.Tensor:
        """upper(z_q) - lower(z_y); zero for q = y."""
        lo, hi = self.bounds()
        upper = hi - lo.gather(1, y.view(-1, 1))
        return upper.scatter(1, y.view(-1, 1), 0.0)

    def add_box(self, radius: torch.Tensor) -> Interval:
        return Interval(self.center, self.radius + radius)

    def numel(self) -> int:
        return 2 * self.center.numel()


DOMAINS: dict[str, type[Zonotope] | type[Interval]] = {"zonotope": Zonotope, "interval": Interval}
