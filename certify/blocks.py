"""Generator blocks of a zonotope: the linear map from one group of noise symbols to the neurons.

A zonotope's generators come in blocks, one per source of symbols: the input pixels, the new
symbols of each ReLU layer (DeepZono: one per crossing neuron), of each non-dominated max-pool
window, and (in sound_fp mode) of each layer's rounding error. Three representations, each
exploiting the structure its symbols have:

* `Patches`: every neuron's coefficients live on a small window of its source, as a convolution
  sees it. The input box starts as a diagonal (1x1 windows: one symbol per pixel, scaled by its
  radius, zero where the range collapsed); a convolution widens the windows instead of
  convolving every generator, so conv stages cost what the windows hold, not generators x
  neurons. A Linear layer adds the windows back onto the source and yields a dense block.
* `Sparse`: one symbol per listed neuron, for the ReLU symbols: a convolution gathers the kernel
  around each symbol, a Linear layer gathers weight columns (a trained network at a useful
  radius has few crossing ReLUs, so this is where most generators are saved).
* `Dense`: generators as a dimension of their own, `(B, G, *shape)`, so affine layers run as
  one batched matmul or convolution over all generators.

Every block is a pure value: operations return new blocks and never modify their input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Pair = tuple[int, int]


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis (dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def fold_windows(
    z: torch.Tensor, stride: Pair, padding: Pair, out_hw: tuple[int, int], lead: int = 1
) -> torch.Tensor:
    """Sum a grid of windows `z` `(gh, gw, *lead, kh, kw, *rest)`, window (i, j) placed at
    `stride * (i, j) - padding`, onto a `(*lead, *out_hw, *rest)` canvas: what `F.fold` does,
    with one strided add per grid cell or per window tap, whichever is fewer (no loop over
    samples, which torch's CPU col2im has).
    """
    gh, gw = z.shape[:2]
    kh, kw = z.shape[2 + lead : 4 + lead]
    (sh, sw), (ph, pw) = stride, padding
    ch, cw = max(sh * (gh - 1) + kh, ph + out_hw[0]), max(sw * (gw - 1) + kw, pw + out_hw[1])
    canvas = z.new_zeros(*z.shape[2 : 2 + lead], ch, cw, *z.shape[4 + lead :])
    at = (slice(None),) * lead
    if kh * kw <= gh * gw:
        for u in range(kh):
            for v in range(kw):
                rows, cols = (
                    slice(u, u + sh * (gh - 1) + 1, sh),
                    slice(v, v + sw * (gw - 1) + 1, sw),
                )
                canvas[(*at, rows, cols)] += z[(slice(None), slice(None), *at, u, v)].movedim(
                    (0, 1), (lead, lead + 1)
                )
    else:
        for i in range(gh):
            for j in range(gw):
                canvas[(*at, slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))] += z[i, j]
    return canvas[(*at, slice(ph, ph + out_hw[0]), slice(pw, pw + out_hw[1]))]


@dataclass(frozen=True)
class Dense:
    """Generators as their own dimension: `coef[b, g]` is generator g of sample b.

    A per-neuron factor `post` (a ReLU's slopes) is kept aside until a layer needs it: the
    radius only scales by |post|, and a Linear layer folds it into its weights, so the largest
    tensor of the analysis is never rewritten just to be scaled.
    """

    coef: torch.Tensor  # (B, G, *shape)
    post: torch.Tensor | None = None  # (1 or B, *shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.coef.shape[2:])

    def numel(self) -> int:
        return self.coef.numel()

    def values(self) -> torch.Tensor:
        """The coefficients with `post` applied."""
        return self.coef if self.post is None else self.coef * self.post.unsqueeze(1)

    def radius(self) -> torch.Tensor:
        """Per-neuron sum of |coefficient| over the block's generators, `(B, *shape)`."""
        b, g = self.coef.shape[:2]
        r = self.coef.reshape(b, g, -1).abs().sum(1).view(b, *self.shape)
        return r if self.post is None else r * self.post.abs()

    def scale(self, s: torch.Tensor) -> Dense:
        """Multiply every neuron by `s` (shape `(1 or B, *shape)`), lazily."""
        return Dense(self.coef, s if self.post is None else self.post * s)

    def conv(self, weight: torch.Tensor, stride: Pair, padding: Pair, groups: int) -> Dense:
        coef = self.values()
        b, g, c, h, w = coef.shape
        out = F.conv2d(coef.reshape(b * g, c, h, w), weight, None, stride, padding, 1, groups)
        return Dense(out.view(b, g, *out.shape[1:]))

    def linear(self, weight: torch.Tensor) -> Dense:
        b, g = self.coef.shape[:2]
        coef = self.coef.reshape(b, g, -1)
        if self.post is None:
            return Dense(coef @ weight.t())
        return Dense(coef @ (self.post.reshape(self.post.shape[0], -1, 1) * weight.t()))

    def dense(self) -> Dense:
        return self


@dataclass(frozen=True)
class Patches:
    """Window-local generators, like auto_LiRPA's Patches but propagated forward.

    Neuron `(c, i, j)` of sample b has coefficient `coef[i, j, s, u, v, b, c]` on the source
    symbol `(s, stride[0] * i - padding[0] + u, stride[1] * j - padding[1] + v)`; coefficients
    that fall outside the source are zero by construction. When `depthwise`, the source channel
    is the neuron's own channel and the `s` axis has length 1. A flat layer of n neurons is held
    as n channels of a 1x1 image. The layout (neuron position, window, sample, channel) makes
    a Linear layer one batched matmul per position and keeps per-neuron work contiguous.
    """

    coef: torch.Tensor  # (H, W, Cs, Kh, Kw, B, C)
    stride: Pair
    padding: Pair
    source: tuple[int, int, int]  # (channels, height, width) of the symbols' source
    depthwise: bool

    @staticmethod
    def diagonal(radius: torch.Tensor) -> Patches:
        """One symbol per element of `radius` `(B, C, H, W)` or `(B, n)`, scaled by it."""
        r = radius if radius.dim() == 4 else radius.reshape(radius.shape[0], -1, 1, 1)
        b, c, h, w = r.shape
        coef = r.permute(2, 3, 0, 1).reshape(h, w, 1, 1, 1, b, c)
        return Patches(coef, (1, 1), (0, 0), (c, h, w), True)

    @property
    def shape(self) -> tuple[int, ...]:
        h, w, *_, c = self.coef.shape
        return (c, h, w)

    def numel(self) -> int:
        return self.coef.numel()

    def radius(self) -> torch.Tensor:
        h, w, cs, kh, kw, b, c = self.coef.shape
        r = self.coef.view(h * w, cs * kh * kw, b * c).abs().sum(1)
        return r.view(h, w, b, c).permute(2, 3, 0, 1)

    def scale(self, s: torch.Tensor) -> Patches:
        c, h, w = self.shape
        s = s.reshape(s.shape[0], c, h, w).permute(2, 3, 0, 1)[:, :, None, None, None]
        return Patches(self.coef * s, self.stride, self.padding, self.source, self.depthwise)

    def conv(
        self, weight: torch.Tensor, stride: Pair, padding: Pair, groups: int
    ) -> Dense | Patches:
        """Compose the windows with a convolution: the window grows by (k - 1) * stride."""
        h, w, cs, kh, kw, b, c = self.coef.shape
        o, _, ah, aw = weight.shape
        sh, sw = self.stride
        new_k = (kh + (ah - 1) * sh, kw + (aw - 1) * sw)
        if new_k[0] * new_k[1] >= self.source[1] * self.source[2]:
            return self.dense().conv(weight, stride, padding, groups)
        keeps_channels = groups == c == o  # per-channel (average pooling)
        if self.depthwise and not (groups == 1 or keeps_channels):
            return self._full().conv(weight, stride, padding, groups)
        ho, wo = conv_out(h, ah, stride[0], padding[0]), conv_out(w, aw, stride[1], padding[1])
        taps, n = ah * aw, cs * kh * kw * b
        images = self.coef.permute(2, 3, 4, 5, 6, 0, 1).reshape(n, c, h, w)
        cols = F.unfold(images, (ah, aw), 1, padding, stride).view(cs, kh, kw, b, c, taps, -1)
        wt = weight.reshape(o, -1, taps)
        if self.depthwise and keeps_channels:  # y[t, l, 0, u, v, b, c]
            y = torch.einsum("uvbctl,ct->tluvbc", cols[0], wt[:, 0]).unsqueeze(2)
        elif self.depthwise:  # the source channel is the input channel: y[t, l, c, u, v, b, o]
            y = torch.einsum("uvbctl,oct->tlcuvbo", cols[0], wt)
        elif groups == 1:  # y[t, l, s, u, v, b, o], summed over the input channels
            y = torch.einsum("suvbitl,oit->tlsuvbo", cols, wt)
        else:  # the same, per group
            cols = cols.view(cs, kh, kw, b, groups, c // groups, taps, -1)
            wg = wt.view(groups, o // groups, c // groups, taps)
            y = torch.einsum("suvbgitl,goit->tlsuvbgo", cols, wg).flatten(-2)
        # Sum the taps' windows, each shifted by the block's stride, into the wider window
        # (y stays whatever view einsum returned: the adds read it strided, nothing is copied).
        y = y.reshape(ah, aw, ho * wo, *y.shape[2:])
        out = fold_windows(y, self.stride, (0, 0), new_k, lead=2)
        out = out.view(ho, wo, y.shape[3], *new_k, b, o)
        new_padding = (self.padding[0] + padding[0] * sh, self.padding[1] + padding[1] * sw)
        new_stride = (sh * stride[0], sw * stride[1])
        depthwise = self.depthwise and keeps_channels
        return Patches(out, new_stride, new_padding, self.source, depthwise)

    def linear(self, weight: torch.Tensor) -> Dense:
        """Contract the neurons with `weight` `(M, C*H*W)` (one matmul per neuron position) and
        add each position's window onto the source, giving a dense `(B, G, M)` block."""
        h, w, cs, kh, kw, b, c = self.coef.shape
        m = weight.shape[0]
        src_c, src_h, src_w = self.source
        wl = weight.reshape(m, c, h * w).permute(2, 1, 0)  # (L, C, M)
        if self.depthwise and (kh, kw, h, w) == (1, 1, src_h, src_w):  # diagonal: scale rows
            diag = self.coef.reshape(h * w, b, c).permute(1, 2, 0).reshape(b, -1)
            return Dense(diag[:, :, None] * weight.t())
        if self.depthwise:  # z[l, c, u, v, b, m]: source channel = neuron channel, no sum
            z = self.coef.reshape(h * w, kh, kw, b, c).permute(0, 4, 1, 2, 3)[..., None]
            z = z * wl[:, :, None, None, None, :]
        else:  # z[l, s, u, v, b, m]
            z = torch.bmm(self.coef.reshape(h * w, -1, c), wl)
        z = z.reshape(h, w, -1, kh, kw, b, m).permute(0, 1, 5, 2, 3, 4, 6)
        img = fold_windows(z, self.stride, self.padding, (src_h, src_w), lead=2)
        return Dense(img.reshape(b, -1, m))

    def dense(self) -> Dense:
        """Scatter every window into its place on the source: `(B, G, C, H, W)`."""
        h, w, cs, kh, kw, b, c = self.coef.shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        src_c, src_h, src_w = self.source
        ch, cw = max(sh * (h - 1) + kh, ph + src_h), max(sw * (w - 1) + kw, pw + src_w)
        dev = self.coef.device
        rows = sh * torch.arange(h, device=dev) + torch.arange(kh, device=dev)[:, None]
        cols = sw * torch.arange(w, device=dev) + torch.arange(kw, device=dev)[:, None]
        index = (rows[:, None, :, None] * cw + cols[None, :, None, :]).reshape(1, -1, 1, 1, h, w)
        src = self.coef.permute(2, 3, 4, 5, 6, 0, 1).reshape(cs, kh * kw, b, c, h, w)
        canvas = src.new_zeros(cs, ch * cw, b, c, h, w)
        canvas = canvas.scatter(1, index.expand(cs, -1, b, c, -1, -1), src)
        canvas = canvas.view(cs, ch, cw, b, c, h, w)[:, ph : ph + src_h, pw : pw + src_w]
        if self.depthwise:
            eye = torch.eye(c, dtype=canvas.dtype, device=dev).view(c, 1, 1, 1, c, 1, 1)
            canvas = canvas * eye
        return Dense(canvas.permute(3, 0, 1, 2, 4, 5, 6).reshape(b, -1, c, h, w))

    def _full(self) -> Patches:
        """The same block with the source channel axis spelled out (depthwise -> full)."""
        h, w, _, kh, kw, b, c = self.coef.shape
        eye = torch.eye(c, dtype=self.coef.dtype, device=self.coef.device)
        coef = self.coef * eye.view(1, 1, c, 1, 1, 1, c)
        return Patches(coef, self.stride, self.padding, self.source, False)


@dataclass(frozen=True)
class Sparse:
    """One generator per selected neuron: generator t of sample b is `value[b, t]` on the neuron
    with flat index `index[b, t]`. DeepZono's new ReLU symbols (one per crossing neuron) are
    kept this way; samples with fewer crossings pad with zero values. A convolution then only
    gathers kernel entries around each symbol and a Linear layer gathers weight columns.
    """

    value: torch.Tensor  # (B, k)
    index: torch.Tensor  # (B, k), int64
    shape: tuple[int, ...]

    @staticmethod
    def nonzeros(x: torch.Tensor) -> Sparse:
        """The nonzero entries of `x` `(B, *shape)`, padded to the largest count in the batch."""
        flat = x.reshape(x.shape[0], -1)
        nonzero = flat != 0
        k = max(int(nonzero.sum(1).max()), 1)
        index = torch.argsort(nonzero.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
        return Sparse(flat.gather(1, index), index, tuple(x.shape[1:]))

    def numel(self) -> int:
        return self.value.numel()

    def radius(self) -> torch.Tensor:
        r = self.value.new_zeros(self.value.shape[0], math.prod(self.shape))
        return r.scatter_add(1, self.index, self.value.abs()).view(-1, *self.shape)

    def scale(self, s: torch.Tensor) -> Sparse:
        s = s.reshape(s.shape[0], -1).expand(self.value.shape[0], -1)
        return Sparse(self.value * s.gather(1, self.index), self.index, self.shape)

    def conv(self, weight: torch.Tensor, stride: Pair, padding: Pair, groups: int) -> Dense:
        """Each symbol's image is the kernel, flipped around its position: `(B, k, O, Ho, Wo)`;
        as window patches instead when that is smaller (many symbols, few kernel taps)."""
        c, h, w = self.shape
        o, cg, kh, kw = weight.shape
        per_symbol = o if groups == c == o else o * c  # patch size per output, / kernel taps
        if self.value.shape[1] * o > per_symbol * kh * kw:
            return Patches.diagonal(self.values()).conv(weight, stride, padding, groups)
        if groups > 1:  # block-diagonal (O, C, kh, kw) kernel
            mask = torch.block_diag(*[weight.new_ones(o // groups, cg)] * groups)
            weight = weight.repeat(1, groups, 1, 1) * mask[:, :, None, None]
        ho, wo = conv_out(h, kh, stride[0], padding[0]), conv_out(w, kw, stride[1], padding[1])
        dev = self.index.device
        ch, rest = self.index // (h * w), self.index % (h * w)
        rows = (rest // w + padding[0])[..., None] - stride[0] * torch.arange(ho, device=dev)
        cols = (rest % w + padding[1])[..., None] - stride[1] * torch.arange(wo, device=dev)
        inside = ((rows >= 0) & (rows < kh))[..., :, None] & ((cols >= 0) & (cols < kw))[
            ..., None, :
        ]
        taps = weight.permute(1, 2, 3, 0)[  # (B, k, Ho, Wo, O)
            ch[..., None, None],
            rows.clamp(0, kh - 1)[..., None],
            cols.clamp(0, kw - 1)[..., None, :],
        ]
        coef = taps * (inside.to(taps.dtype) * self.value[..., None, None])[..., None]
        return Dense(coef.permute(0, 1, 4, 2, 3))

    def linear(self, weight: torch.Tensor) -> Dense:
        return Dense(weight.t()[self.index] * self.value[..., None])

    def values(self) -> torch.Tensor:
        """The symbols' values on their neurons, `(B, *shape)` (zero elsewhere)."""
        x = self.value.new_zeros(self.value.shape[0], math.prod(self.shape))
        return x.scatter_add(1, self.index, self.value).view(-1, *self.shape)

    def dense(self) -> Dense:
        b, k = self.value.shape
        coef = self.value.new_zeros(b, k, math.prod(self.shape))
        coef = coef.scatter(2, self.index[..., None], self.value[..., None])
        return Dense(coef.view(b, k, *self.shape))


Block = Dense | Patches | Sparse
