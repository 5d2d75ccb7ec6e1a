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

from certify.allocator import empty, zeros

Pair = tuple[int, int]

TILE_BYTES = 2**20  # output rows summed at once by `_conv_matmuls`: about an L2 cache
# below this many rows per window row product, a Linear layer multiplies all windows at once
SMALL_PRODUCT_ROWS = 256
# below this share of live source symbols, a Linear layer multiplies only their window rows
LIVE_GATHER_SHARE = 0.5


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis (dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def _tracks_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on these (`out=` variants cannot be used then)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _mul_into(dst: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """dst[...] = a * b, without a temporary unless autograd needs one."""
    if _tracks_grad(a, b):
        dst.copy_(a * b)
    else:
        torch.mul(a, b, out=dst)


def _l1_over_rows(x: torch.Tensor, block: int = 2**18) -> torch.Tensor:
    """sum_i |x[i, ...]| of a `(R, ...)` tensor (any strides), a cache-sized block of rows at a
    time (one `abs().sum(0)` would first write all of |x|: two to three times slower past the
    caches)."""
    rows = max(1, block // max(1, x[0].numel()))
    if rows >= x.shape[0]:
        return x.abs().sum(0)
    parts = x.split(rows)
    total = parts[0].abs().sum(0)
    for part in parts[1:]:
        total = total + part.abs().sum(0)
    return total


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
        r = _l1_over_rows(self.coef.reshape(b, g, -1).transpose(0, 1)).view(b, *self.shape)
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

    Neuron `(c, i, j)` of sample b has coefficient `coef[u, v, s, i, j, b, c]` on the source
    symbol `(s, stride[0] * i - padding[0] + u, stride[1] * j - padding[1] + v)`; coefficients
    that fall outside the source are zero by construction. When `depthwise`, the source channel
    is the neuron's own channel and the `s` axis has length 1. A flat layer of n neurons is held
    as n channels of a 1x1 image. The window offset comes first: for one offset `(u, v)` the
    neurons form a plain `(s, i, j, b, c)` image, so a convolution is, per kernel tap and window
    row, one matrix product added in place onto the output's window (`_conv_taps`), and the
    radius run over contiguous memory. As in `Dense`, a per-neuron factor `post` (ReLU slopes,
    BatchNorm scales) is kept aside until a convolution or a Linear layer copies the windows
    anyway.
    """

    coef: torch.Tensor  # (Kh, Kw, Cs, H, W, B, C)
    stride: Pair
    padding: Pair
    source: tuple[int, int, int]  # (channels, height, width) of the symbols' source
    depthwise: bool
    post: torch.Tensor | None = None  # (H, W, 1 or B, C)
    # what `coef` is the top-left `(H, W)` corner of, when a convolution wrote it with scratch
    # positions around it (zero or finite): summed whole, it is contiguous
    plane: torch.Tensor | None = None  # (Kh, Kw, Cs, H', W', B, C), H' >= H, W' >= W
    # sum_{u, v, s} |plane|, (H', W', B, C), when the convolution summed it while writing
    abs_sum: torch.Tensor | None = None
    # (Cs, Hs, Ws) bool: the source symbols that may have a nonzero coefficient in any sample
    # (a diagonal's nonzero radii: DeepZono's symbols of the crossing ReLUs); None: all may
    live: torch.Tensor | None = None

    @staticmethod
    def diagonal(radius: torch.Tensor) -> Patches:
        """One symbol per element of `radius` `(B, C, H, W)` or `(B, n)`, scaled by it."""
        r = radius if radius.dim() == 4 else radius.reshape(radius.shape[0], -1, 1, 1)
        b, c, h, w = r.shape
        coef = r.permute(2, 3, 0, 1).reshape(1, 1, 1, h, w, b, c)
        live = None if _tracks_grad(r) else (r != 0).any(0)
        return Patches(coef, (1, 1), (0, 0), (c, h, w), True, live=live)

    @property
    def shape(self) -> tuple[int, ...]:
        *_, h, w, _, c = self.coef.shape
        return (c, h, w)

    def numel(self) -> int:
        return self.coef.numel()

    def values(self) -> torch.Tensor:
        """The coefficients with `post` applied."""
        return self.coef if self.post is None else self.coef * self.post

    def radius(self) -> torch.Tensor:
        h, w = self.coef.shape[3:5]
        if self.abs_sum is not None:
            r = self.abs_sum[:h, :w]
        else:
            whole = self.coef if self.plane is None else self.plane
            r = _l1_over_rows(whole.flatten(0, 2))[:h, :w]  # (H, W, B, C)
        r = r if self.post is None else r * self.post.abs()
        return r.permute(2, 3, 0, 1)

    def scale(self, s: torch.Tensor) -> Patches:
        """Multiply every neuron by `s` (shape `(1 or B, C, H, W)`), lazily."""
        c, h, w = self.shape
        s = s.reshape(s.shape[0], c, h, w).permute(2, 3, 0, 1)
        post = s if self.post is None else self.post * s
        return Patches(
            self.coef, self.stride, self.padding, self.source, self.depthwise, post, self.plane,
            self.abs_sum, self.live,
        )  # fmt: skip

    def conv(
        self, weight: torch.Tensor, stride: Pair, padding: Pair, groups: int
    ) -> Dense | Patches:
        """Compose the windows with a convolution: the window grows by (k - 1) * stride."""
        kh, kw, _, h, w, _, c = self.coef.shape
        o, _, ah, aw = weight.shape
        sh, sw = self.stride
        new_k = (kh + (ah - 1) * sh, kw + (aw - 1) * sw)
        if new_k[0] * new_k[1] >= self.source[1] * self.source[2]:
            return self.dense().conv(weight, stride, padding, groups)
        keeps_channels = groups == c == o  # per-channel (average pooling)
        if self.depthwise and not (groups == 1 or keeps_channels):
            return self._full().conv(weight, stride, padding, groups)
        diagonal = self.depthwise and (kh, kw, sh, sw) == (1, 1, 1, 1) and self.padding == (0, 0)
        if diagonal and groups == 1:
            out = _diagonal_conv(self.coef, self.post, weight, stride, padding)
            return Patches(out, stride, padding, self.source, False, live=self.live)
        args = (self.coef, self.post, weight, stride, padding, (sh, sw))
        new_padding = (self.padding[0] + padding[0] * sh, self.padding[1] + padding[1] * sw)
        new_stride = (sh * stride[0], sw * stride[1])
        ho, wo = conv_out(h, ah, stride[0], padding[0]), conv_out(w, aw, stride[1], padding[1])
        plane = abs_sum = live = None
        if self.live is not None and self.coef.shape[5] == 1 and not self.depthwise:
            live = (self.live, new_stride, new_padding, (ho, wo))  # the output rows' symbols
        if self.depthwise or keeps_channels:
            out = _conv_products(*args, keeps_channels, live)
        else:
            plane, abs_sum = _conv_matmuls(*args, groups, live)
            out = plane[:, :, :, :ho, :wo]
        depthwise = self.depthwise and keeps_channels
        return Patches(
            out, new_stride, new_padding, self.source, depthwise, None, plane, abs_sum, self.live
        )

    def linear(self, weight: torch.Tensor) -> Dense:
        """Contract the neurons with `weight` `(M, C*H*W)` (one matmul per neuron position) and
        add each position's window onto the source, giving a dense `(B, G, M)` block."""
        kh, kw, cs, h, w, b, c = self.coef.shape
        m = weight.shape[0]
        src_c, src_h, src_w = self.source
        if self.depthwise and (kh, kw, h, w) == (1, 1, src_h, src_w):  # diagonal: scale rows
            diag = self.values().reshape(h * w, b, c).permute(1, 2, 0).reshape(b, -1)
            return Dense(diag[:, :, None] * weight.t())
        (sh, sw), (ph, pw) = self.stride, self.padding
        if self.depthwise:  # source channel = neuron channel: one product per tap, no sums
            vals = self.values()[:, :, 0].permute(0, 1, 4, 5, 2, 3)[..., None]  # (u,v,b,c,h,w,1)
            wt = weight.reshape(m, c, h, w).permute(1, 2, 3, 0)  # (c, h, w, m)
            ch, cw = max(sh * (h - 1) + kh, ph + src_h), max(sw * (w - 1) + kw, pw + src_w)
            canvas = zeros(vals, b, c, ch, cw, m)
            for u in range(kh):
                for v in range(kw):
                    dst = canvas[:, :, u : u + sh * (h - 1) + 1 : sh, v : v + sw * (w - 1) + 1 : sw]
                    dst.addcmul_(vals[u, v], wt)
            img = canvas[:, :, ph : ph + src_h, pw : pw + src_w]
            return Dense(img.reshape(b, -1, m))
        # (L, C, M) contiguous, as a 2-D transpose and a copy of whole M-rows (one transposing
        # copy of all three axes is about 10x slower)
        wl = weight.t().contiguous().view(c, h * w, m).transpose(0, 1).contiguous()
        # rows[i, j, u] = the window row u of the neurons at (i, j), `(Kw * Cs * B, C)`, is
        # multiplied by that position's weights straight into the canvas row it covers,
        # `(Kw, Cs, B, M)` contiguous. One sample's window rows are matrices as they lie, with
        # `post` folded into the weights; several samples' are copied together, `post` applied.
        if b == 1:
            rows = self.coef.permute(3, 4, 0, 1, 2, 5, 6)
            if self.post is not None:
                wl = wl * self.post.reshape(h * w, c, 1)
            if self.live is not None and self.live.float().mean() < LIVE_GATHER_SHARE:
                canvas = zeros(rows, src_h * src_w * cs, m)
                _add_live_rows(canvas, self.coef, wl, self.stride, self.padding, self.live)
                return Dense(canvas.view(1, -1, m))
        else:
            rows = empty(self.coef, h, w, kh, kw, cs, b, c)
            coef = self.coef.permute(3, 4, 0, 1, 2, 5, 6)
            if self.post is None:
                rows.copy_(coef)
            else:
                _mul_into(rows, coef, self.post[:, :, None, None, None])
        # the canvas is the source itself (taps outside it are zero by construction), laid
        # out (y, x, s, b, m) so that the dense block is a view, `(B, G, M)` with G = (y, x, s)
        canvas = zeros(rows, src_h, src_w, cs, b, m)
        if kw * cs * b < SMALL_PRODUCT_ROWS:
            _add_window_products(canvas, rows, wl, self.stride, self.padding)
        else:
            _add_window_rows(canvas, rows, wl, self.stride, self.padding)
        return Dense(canvas.permute(3, 0, 1, 2, 4).reshape(b, -1, m))

    def dense(self) -> Dense:
        """Scatter every window into its place on the source: `(B, G, C, H, W)`."""
        kh, kw, cs, h, w, b, c = self.coef.shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        src_c, src_h, src_w = self.source
        ch, cw = max(sh * (h - 1) + kh, ph + src_h), max(sw * (w - 1) + kw, pw + src_w)
        dev = self.coef.device
        rows = sh * torch.arange(h, device=dev) + torch.arange(kh, device=dev)[:, None]
        cols = sw * torch.arange(w, device=dev) + torch.arange(kw, device=dev)[:, None]
        index = (rows[:, None, :, None] * cw + cols[None, :, None, :]).reshape(1, -1, 1, 1, h, w)
        src = self.values().permute(2, 0, 1, 5, 6, 3, 4).reshape(cs, kh * kw, b, c, h, w)
        canvas = zeros(src, cs, ch * cw, b, c, h, w)
        canvas = canvas.scatter(1, index.expand(cs, -1, b, c, -1, -1), src)
        canvas = canvas.view(cs, ch, cw, b, c, h, w)[:, ph : ph + src_h, pw : pw + src_w]
        if self.depthwise:
            eye = torch.eye(c, dtype=canvas.dtype, device=dev).view(c, 1, 1, 1, c, 1, 1)
            canvas = canvas * eye
        return Dense(canvas.permute(3, 0, 1, 2, 4, 5, 6).reshape(b, -1, c, h, w))

    def _full(self) -> Patches:
        """The same block with the source channel axis spelled out (depthwise -> full)."""
        c = self.coef.shape[-1]
        eye = torch.eye(c, dtype=self.coef.dtype, device=self.coef.device)
        coef = self.values() * eye.view(1, 1, c, 1, 1, 1, c)
        return Patches(coef, self.stride, self.padding, self.source, False, live=self.live)


def _window_span(start: int, size: int, bound: int) -> tuple[int, int, int]:
    """The part `[lo, hi)` of the window `[start, start + size)` inside `[0, bound)`, and the
    window offset of `lo`."""
    lo, hi = max(0, start), min(bound, start + size)
    return lo, max(lo, hi), lo - start


def _add_window_rows(
    canvas: torch.Tensor, rows: torch.Tensor, wl: torch.Tensor, stride: Pair, padding: Pair
) -> None:
    """canvas[y, x] += the windows' rows times their position's weights, canvas row by canvas
    row (each hot while it is summed): one `addmm_` per canvas row, window row and position,
    straight into the canvas. `rows` `(H, W, Kh, Kw, Cs, B, C)`, `wl` `(H*W, C, M)`, `canvas`
    `(Y, X, Cs, B, M)`."""
    h, w, kh, kw, _, _, c = rows.shape
    src_h, src_w, *_, m = canvas.shape
    (sh, sw), (ph, pw) = stride, padding
    for y in range(src_h):
        r = y + ph
        for i in range(max(0, -(-(r - kh + 1) // sh)), min(h, r // sh + 1)):
            for j in range(w):
                x0, x1, v0 = _window_span(sw * j - pw, kw, src_w)
                if x0 < x1:
                    dst = canvas[y, x0:x1].view(-1, m)
                    dst.addmm_(rows[i, j, r - sh * i, v0 : v0 + x1 - x0].view(-1, c), wl[i * w + j])


def _add_live_rows(
    canvas: torch.Tensor,
    coef: torch.Tensor,
    wl: torch.Tensor,
    stride: Pair,
    padding: Pair,
    live: torch.Tensor,
) -> None:
    """canvas += the windows' rows times their position's weights, as `_add_window_rows`, for
    one sample whose source has few live symbols: per position, only the window rows of live
    symbols are gathered, multiplied and added onto their canvas rows (the other rows are zero
    by construction). `coef` `(Kh, Kw, Cs, H, W, 1, C)`, `wl` `(H*W, C, M)`, `live`
    `(Cs, Y, X)`, `canvas` `(Y * X * Cs, M)` rows `(y, x, s)`."""
    kh, kw, cs, h, w, _, c = coef.shape
    _, src_h, src_w = live.shape
    (sh, sw), (ph, pw) = stride, padding
    dev = coef.device
    # (H, W, Kh, Kw, Cs): whether each window row is live, and the canvas row it lands on
    keep = _live_rows(live, stride, padding, (h, w), coef.shape).view(kh, kw, cs, h, w)
    keep = keep.permute(3, 4, 0, 1, 2)
    ys = (sh * torch.arange(h, device=dev)[:, None] - ph + torch.arange(kh, device=dev)).clamp(0)
    xs = (sw * torch.arange(w, device=dev)[:, None] - pw + torch.arange(kw, device=dev)).clamp(0)
    target = (ys[:, None, :, None, None] * src_w + xs[None, :, None, :, None]) * cs + torch.arange(
        cs, device=dev
    )
    flat = coef.flatten(0, 2)  # window rows (u, v, s) of each position (i, j)
    target, keep = target.view(h * w, -1), keep.reshape(h * w, -1)
    for p in range(h * w):
        rows = keep[p].nonzero().squeeze(1)
        if rows.numel():
            part = flat[:, p // w, p % w, 0].index_select(0, rows)
            canvas.index_add_(0, target[p, rows], part @ wl[p])


def _add_window_products(
    canvas: torch.Tensor, rows: torch.Tensor, wl: torch.Tensor, stride: Pair, padding: Pair
) -> None:
    """The same sum as `_add_window_rows` for small windows rows (few source channels and
    samples): all positions' windows in one batched product, then each window added onto the
    canvas (a temporary the size of all windows, against thousands of small products)."""
    h, w, kh, kw, cs, b, c = rows.shape
    src_h, src_w, *_, m = canvas.shape
    (sh, sw), (ph, pw) = stride, padding
    windows = torch.bmm(rows.reshape(h * w, -1, c), wl).view(h, w, kh, kw, cs, b, m)
    for i in range(h):
        y0, y1, u0 = _window_span(sh * i - ph, kh, src_h)
        for j in range(w):
            x0, x1, v0 = _window_span(sw * j - pw, kw, src_w)
            if y0 < y1 and x0 < x1:
                canvas[y0:y1, x0:x1] += windows[i, j, u0 : u0 + y1 - y0, v0 : v0 + x1 - x0]


def _tap_range(n_out: int, n_in: int, stride: int, padding: int, tap: int) -> tuple[int, int, int]:
    """Outputs `[lo, hi)` whose kernel `tap` lands inside the `n_in` inputs, and the input the
    first of them reads (`stride * lo + tap - padding`)."""
    lo = max(0, -(-(padding - tap) // stride))
    hi = min(n_out, (n_in - 1 - tap + padding) // stride + 1)
    return lo, max(lo, hi), stride * lo + tap - padding


def _diagonal_conv(
    coef: torch.Tensor,
    post: torch.Tensor | None,
    weight: torch.Tensor,
    stride: Pair,
    padding: Pair,
) -> torch.Tensor:
    """A convolution (`groups == 1`) of a diagonal block, one symbol per neuron (`coef`
    `(1, 1, 1, H, W, B, C)`, times `post`): every output window is the kernel scaled by the
    symbols under it. One broadcast product of a strided view of the zero-padded values with
    the kernel, written once: `(Ah, Aw, C, Ho, Wo, B, O)`.
    """
    _, _, _, h, w, b, c = coef.shape
    o, _, ah, aw = weight.shape
    (st1, st2), (p1, p2) = stride, padding
    ho, wo = conv_out(h, ah, st1, p1), conv_out(w, aw, st2, p2)
    hp, wp = h + 2 * p1, w + 2 * p2
    vals = coef[0, 0, 0] if post is None else coef[0, 0, 0] * post  # (H, W, B, C)
    padded = vals.new_zeros(c, hp, wp, b)
    padded[:, p1 : p1 + h, p2 : p2 + w] = vals.permute(3, 0, 1, 2)
    # windows[a1, a2, c, i, j, b] = padded[c, st1 i + a1, st2 j + a2, b]
    windows = padded.as_strided(
        (ah, aw, c, ho, wo, b), (wp * b, b, hp * wp * b, st1 * wp * b, st2 * b, 1)
    )
    out = empty(coef, ah, aw, c, ho, wo, b, o)
    _mul_into(out, windows[..., None], weight.permute(2, 3, 1, 0)[:, :, :, None, None, None, :])
    return out


def _conv_products(
    coef: torch.Tensor,
    post: torch.Tensor | None,
    weight: torch.Tensor,
    stride: Pair,
    padding: Pair,
    window_stride: Pair,
    per_channel: bool,
    live: tuple[torch.Tensor, Pair, Pair, Pair] | None = None,
) -> torch.Tensor:
    """A convolution of a depthwise block or with per-channel kernels: products, no sums over
    channels. With `per_channel` (`groups == C == O`, average pooling) each neuron channel keeps
    its own windows; otherwise (a depthwise block, `groups == 1`) the input channel becomes the
    output's source channel. Each tap adds a strided view of the input onto a strided view of
    the output's windows, shifted by `window_stride * tap`; no copy of the input is made.
    Returns `(KH, KW, Cs', Ho, Wo, B, O)`. `live`: as in `_conv_matmuls`.
    """
    if per_channel and not _tracks_grad(coef, weight, *([] if post is None else [post])):
        return _per_channel_by_cell(coef, post, weight, stride, padding, window_stride, live)
    kh, kw, cs, h, w, b, c = coef.shape
    o, _, ah, aw = weight.shape
    (st1, st2), (p1, p2), (sh, sw) = stride, padding, window_stride
    ho, wo = conv_out(h, ah, st1, p1), conv_out(w, aw, st2, p2)
    out_cs = cs if per_channel else c
    out = zeros(coef, kh + (ah - 1) * sh, kw + (aw - 1) * sw, out_cs, ho, wo, b, o)
    for a1, a2, (oi, oj), (rows, cols) in _inside_taps((h, w), (ho, wo), weight, stride, padding):
        src = coef[:, :, :, rows, cols]  # (kh, kw, cs, ni, nj, b, c)
        dst = out[a1 * sh : a1 * sh + kh, a2 * sw : a2 * sw + kw, :, oi, oj]
        tap = weight[:, :, a1, a2]  # (O, C) or, per channel, (C, 1)
        if per_channel:  # the tap's weight and `post` are one factor per neuron
            dst.addcmul_(src, tap[:, 0] if post is None else post[rows, cols] * tap[:, 0])
            continue
        if post is not None:
            src = src * post[rows, cols]
        # dst[u, v, c, i, j, b, o] += src[u, v, 0, i, j, b, c] * tap[o, c]
        src = src[:, :, 0].permute(0, 1, 5, 2, 3, 4)[..., None]
        dst.addcmul_(src, tap.t().reshape(1, 1, c, 1, 1, 1, o))
    return out


def _inside_taps(
    size: Pair, out_size: Pair, weight: torch.Tensor, stride: Pair, padding: Pair
) -> list[tuple[int, int, tuple[slice, slice], tuple[slice, slice]]]:
    """The kernel taps `(a1, a2)` of a convolution that land inside its `size` input for some
    outputs: those outputs (rows and columns of the `out_size` output) and the input rows and
    columns they read (strided slices)."""
    (h, w), (ho, wo) = size, out_size
    _, _, ah, aw = weight.shape
    (st1, st2), (p1, p2) = stride, padding
    taps = []
    for a1 in range(ah):
        i_lo, i_hi, y0 = _tap_range(ho, h, st1, p1, a1)
        for a2 in range(aw):
            j_lo, j_hi, x0 = _tap_range(wo, w, st2, p2, a2)
            if i_hi > i_lo and j_hi > j_lo:
                rows = slice(y0, y0 + st1 * (i_hi - i_lo), st1)
                cols = slice(x0, x0 + st2 * (j_hi - j_lo), st2)
                taps.append((a1, a2, (slice(i_lo, i_hi), slice(j_lo, j_hi)), (rows, cols)))
    return taps


def _per_channel_by_cell(
    coef: torch.Tensor,
    post: torch.Tensor | None,
    weight: torch.Tensor,
    stride: Pair,
    padding: Pair,
    window_stride: Pair,
    live: tuple[torch.Tensor, Pair, Pair, Pair] | None = None,
) -> torch.Tensor:
    """`_conv_products` with per-channel kernels (average pooling; no autograd), one output
    window cell at a time: the first tap covering the whole cell writes it, the others add
    onto it while it is hot (no zero fill, no read-modify-write of the whole output per tap).
    On CIFAR-10's cifar-cnn 62 -> 55 ms for its largest block (one thread). With `live` (one
    sample, fewer than half its symbols live, every tap covering the whole output: pooling
    without padding) only each cell's live rows are gathered and summed (`_pool_live_rows`)."""
    kh, kw, cs, h, w, b, c = coef.shape
    _, _, ah, aw = weight.shape
    (st1, st2), (p1, p2), (sh, sw) = stride, padding, window_stride
    ho, wo = conv_out(h, ah, st1, p1), conv_out(w, aw, st2, p2)
    out = empty(coef, kh + (ah - 1) * sh, kw + (aw - 1) * sw, cs, ho, wo, b, c)
    taps = [  # (a1, a2, output positions, input rows and columns, factor per neuron)
        (a1, a2, outputs, (rows, cols),
         weight[:, 0, a1, a2] if post is None else post[rows, cols] * weight[:, 0, a1, a2])
        for a1, a2, outputs, (rows, cols) in _inside_taps(
            (h, w), (ho, wo), weight, stride, padding
        )
    ]  # fmt: skip
    whole = (slice(0, ho), slice(0, wo))
    if (
        live is not None
        and live[0].float().mean() < LIVE_GATHER_SHARE
        and all((oi, oj) == whole for _, _, (oi, oj), _, _ in taps)
        and coef.stride()[-1] == 1
        and all(st % c == 0 for st in coef.stride()[2:5])  # a cell's rows: views of C values
    ):
        _pool_live_rows(out, coef, taps, _live_rows(*live, out.shape), window_stride)
        return out
    for uu in range(out.shape[0]):
        for vv in range(out.shape[1]):
            dst, written = out[uu, vv], False
            for a1, a2, (oi, oj), (rows, cols), factor in taps:
                u, v = uu - a1 * sh, vv - a2 * sw
                if not (0 <= u < kh and 0 <= v < kw):
                    continue
                src = coef[u, v, :, rows, cols]
                if not written and (oi, oj) == whole:
                    torch.mul(src, factor, out=dst)
                else:
                    if not written:
                        dst.zero_()
                    dst[:, oi, oj].addcmul_(src, factor)
                written = True
            if not written:
                dst.zero_()
    return out


def _pool_live_rows(
    out: torch.Tensor,
    coef: torch.Tensor,
    taps: list,
    live_rows: torch.Tensor,
    window_stride: Pair,
) -> None:
    """`_per_channel_by_cell`'s cells, one sample, from the live rows `(s, i, j)` of each output
    cell only (`_live_rows`): each tap's input rows and per-neuron factors are gathered, their
    products summed, and the sum written into the zeroed cell."""
    kh, kw, cs, h, w, _, c = coef.shape
    _, _, _, ho, wo, _, _ = out.shape
    sh, sw = window_stride
    st_s, st_y, st_x = coef.stride()[2:5]  # rows (s, y, x) of a cell: multiples of C, C unit
    span = (st_s * (cs - 1) + st_y * (h - 1) + st_x * (w - 1)) // c + 1
    factors = [f.reshape(ho * wo, c) if f.dim() == 4 else f for *_, f in taps]
    for uu in range(out.shape[0]):
        for vv in range(out.shape[1]):
            dst = out[uu, vv].view(-1, c)
            dst.zero_()
            rows = live_rows[uu, vv].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            s, i, j = rows // (ho * wo), rows // wo % ho, rows % wo
            acc = None
            for (a1, a2, _, (ys, xs), _), factor in zip(taps, factors, strict=True):
                u, v = uu - a1 * sh, vv - a2 * sw
                if not (0 <= u < kh and 0 <= v < kw):
                    continue
                cell = coef[u, v]  # (Cs, H, W, 1, C), as the rows of its storage
                offset = (
                    s * st_s + (ys.start + ys.step * i) * st_y + (xs.start + xs.step * j) * st_x
                )
                flat = cell.as_strided((span, c), (c, 1))
                src = flat.index_select(0, offset // c)
                f = factor.index_select(0, i * wo + j) if factor.dim() == 2 else factor
                acc = src * f if acc is None else acc.addcmul_(src, f)
            if acc is not None:
                dst.index_copy_(0, rows, acc)


def _conv_matmuls(
    coef: torch.Tensor,
    post: torch.Tensor | None,
    weight: torch.Tensor,
    stride: Pair,
    padding: Pair,
    window_stride: Pair,
    groups: int,
    live: tuple[torch.Tensor, Pair, Pair, Pair] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A convolution of window coefficients `coef` `(Kh, Kw, Cs, H, W, B, C)` (times the
    per-neuron factor `post` `(H, W, 1 or B, C)`, when given), as the sum over kernel taps of a
    shifted image times the tap's `(O, C)` matrix; tap (a1, a2) moves each output's window by
    `window_stride * (a1, a2)`. Returns `(KH, KW, Cs, Hq, Wq, B, O)`, whose top-left
    `(Ho, Wo)` positions are the output; the others are scratch, zero or finite; and, when
    summed cell by cell, the sum of its absolute values over windows `(Hq, Wq, B, O)`. `live`
    (one sample only): the source's live symbols, and the output's window stride, padding and
    size, so that where few symbols live only their rows are summed (`_live_rows`).

    The input is zero-padded and split into `stride` phases (one copy), so that every tap reads
    a contiguous, shifted run of the flattened `(Hq, Wq, B)` positions of each window row:
    one `addmm_` per tap and window row, straight into a contiguous slice of the output, with
    no unfolded copies and no per-tap temporaries. A shifted run crosses into the next row or
    plane only at positions past `(Ho, Wo)`, which the caller ignores.
    """
    kh, kw, cs, h, w, b, c = coef.shape
    o, cg, ah, aw = weight.shape
    (st1, st2), (p1, p2), (sh, sw) = stride, padding, window_stride
    hq, wq = -(-(h + 2 * p1) // st1), -(-(w + 2 * p2) // st2)
    phases = zeros(coef, st1, st2, kh, kw, cs, hq, wq, b, c)
    # phases[r1, r2, ..., i, j, :, :] = the zero-padded input at (st1 i + r1, st2 j + r2)
    for r1 in range(st1):
        i0, _, y0 = _tap_range(hq, h, st1, p1, r1)
        for r2 in range(st2):
            j0, _, x0 = _tap_range(wq, w, st2, p2, r2)
            src = coef[:, :, :, y0::st1, x0::st2]
            if src.numel() == 0:
                continue
            dst = phases[r1, r2, :, :, :, i0 : i0 + src.shape[3], j0 : j0 + src.shape[4]]
            if post is None:
                dst.copy_(src)
            else:
                _mul_into(dst, src, post[y0::st1, x0::st2])
    shape = (kh + (ah - 1) * sh, kw + (aw - 1) * sw, cs, hq, wq, b, o)
    cell_bytes = math.prod(shape[2:]) * coef.element_size()
    if groups == 1 and cell_bytes >= TILE_BYTES and not _tracks_grad(phases, weight):
        rows = None
        if live is not None and live[0].float().mean() < LIVE_GATHER_SHARE:
            rows = _live_rows(*live, shape)
        return _sum_taps_by_cell(phases, weight, shape, (st1, st2), (sh, sw), rows)
    out = zeros(coef, *shape)
    og = o // groups
    for a1 in range(ah):
        for a2 in range(aw):
            shift = ((a1 // st1) * wq + a2 // st2) * b
            tap = weight[:, :, a1, a2]  # (O, C / groups)
            for u in range(kh):
                run = phases[a1 % st1, a2 % st2, u].view(-1, c)[shift:]  # rows (v, s, i, j, b)
                dst = out[u + a1 * sh, a2 * sw : a2 * sw + kw].view(-1, o)[: run.shape[0]]
                for g in range(groups):
                    dst[:, g * og : (g + 1) * og].addmm_(
                        run[:, g * cg : (g + 1) * cg], tap[g * og : (g + 1) * og].t()
                    )
    return out, None


def _live_rows(
    live: torch.Tensor, stride: Pair, padding: Pair, size: Pair, shape: tuple[int, ...]
) -> torch.Tensor:
    """`(KH, KW, Cs * Hq * Wq)` bool: the rows `(s, i, j)` of every window cell of a one-sample
    output `shape` `(KH, KW, Cs, Hq, Wq, 1, O)` (window `stride`, `padding`, positions `size`
    of the Hq x Wq) whose symbol is live, i.e. that may be nonzero."""
    kh, kw, cs, hq, wq = shape[:5]
    _, src_h, src_w = live.shape
    dev = live.device
    ys = (
        stride[0] * torch.arange(hq, device=dev)
        - padding[0]
        + torch.arange(kh, device=dev)[:, None]
    )
    xs = (
        stride[1] * torch.arange(wq, device=dev)
        - padding[1]
        + torch.arange(kw, device=dev)[:, None]
    )
    y_in = (ys >= 0) & (ys < src_h) & (torch.arange(hq, device=dev) < size[0])  # (KH, Hq)
    x_in = (xs >= 0) & (xs < src_w) & (torch.arange(wq, device=dev) < size[1])  # (KW, Wq)
    rows = live[:, ys.clamp(0, src_h - 1)][:, :, :, xs.clamp(0, src_w - 1)]  # (Cs, KH, Hq, KW, Wq)
    rows = rows & y_in[None, :, :, None, None] & x_in[None, None, None]
    return rows.permute(1, 3, 0, 2, 4).reshape(kh, kw, -1)


def _sum_taps_by_cell(
    phases: torch.Tensor,
    weight: torch.Tensor,
    shape: tuple[int, ...],
    stride: Pair,
    window_stride: Pair,
    live_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_conv_matmuls`' sum over taps for large window cells (`groups == 1`, no autograd): one
    output window cell (U, V) at a time and a cache-sized tile of its rows at a time, so every
    tap landing there is summed while the tile is hot; the first tap writes it (no zero fill).
    Costs more calls than summing tap by tap, so only worth it where a cell is megabytes.
    While a tile is hot, its absolute values are added up over source channels and cells: the
    radius of the next ReLU, `(Hq, Wq, B, O)`, without reading the output again. With
    `live_rows` (`_live_rows`, one sample) each cell's live rows are gathered, summed over its
    taps and written into the zeroed cell: the other rows are zero by construction.
    """
    _, _, kh, kw, _, hq, wq, b, c = phases.shape
    o, _, ah, aw = weight.shape
    (st1, st2), (sh, sw) = stride, window_stride
    out = empty(phases, *shape)
    flat = out.view(shape[0], shape[1], -1, o)  # rows (s, i, j, b) of each cell
    n = flat.shape[2]
    period = hq * wq * b  # rows (i, j, b) of one source channel: tiles hold whole ones
    tile = max(1, TILE_BYTES // (o * out.element_size() * period)) * period
    abs_sum = zeros(out, period, o)
    scratch = empty(out, min(tile, n), o) if live_rows is None else None
    for uu in range(shape[0]):
        rows = [(a1, uu - a1 * sh) for a1 in range(ah) if 0 <= uu - a1 * sh < kh]
        for vv in range(shape[1]):
            cols = [(a2, vv - a2 * sw) for a2 in range(aw) if 0 <= vv - a2 * sw < kw]
            taps = [
                (((a1 // st1) * wq + a2 // st2) * b, phases[a1 % st1, a2 % st2, u, v].view(-1, c),
                 weight[:, :, a1, a2].t())
                for a1, u in rows for a2, v in cols
            ]  # fmt: skip
            if live_rows is not None:
                _sum_live_taps(flat[uu, vv], abs_sum, taps, live_rows[uu, vv], period)
                continue
            for t0 in range(0, n, tile):
                dst = flat[uu, vv, t0 : t0 + tile]
                shift, run, tap = taps[0]
                part = run[shift + t0 : shift + t0 + tile]  # shorter past the last rows
                torch.mm(part, tap, out=dst[: part.shape[0]])
                dst[part.shape[0] :].zero_()
                for shift, run, tap in taps[1:]:
                    part = run[shift + t0 : shift + t0 + tile]
                    dst[: part.shape[0]].addmm_(part, tap)
                hot = torch.abs(dst, out=scratch[: dst.shape[0]])
                abs_sum += hot.view(-1, period, o).sum(0)
    return out, abs_sum.view(hq, wq, b, o)


def _sum_live_taps(
    dst: torch.Tensor,
    abs_sum: torch.Tensor,
    taps: list[tuple[int, torch.Tensor, torch.Tensor]],
    live: torch.Tensor,
    period: int,
) -> None:
    """One output cell `dst` `(R, O)` of `_sum_taps_by_cell`, one sample: the sum over `taps`
    (row shift, input rows, `(C, O)` weights) of the rows where `live`, the other rows zeroed;
    their absolute values are added onto `abs_sum` `(period, O)`."""
    rows = live.nonzero().squeeze(1)
    dst.zero_()
    if rows.numel() == 0:
        return
    acc = None
    for shift, run, tap in taps:
        part = run.index_select(0, rows + shift)
        acc = part @ tap if acc is None else acc.addmm_(part, tap)
    dst.index_copy_(0, rows, acc)
    abs_sum.index_add_(0, rows % period, acc.abs())


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
        coef = zeros(self.value, b, k, math.prod(self.shape))
        coef = coef.scatter(2, self.index[..., None], self.value[..., None])
        return Dense(coef.view(b, k, *self.shape))


Block = Dense | Patches | Sparse
