"""Each structured generator block agrees with its plain dense expansion, operation by operation."""

from __future__ import annotations

import pytest
import torch

from certify import blocks
from certify.blocks import Dense, Patches, Sparse, _l1_over_rows

CONVS = [  # (out channels, kernel, stride, padding, groups) on 4 input channels
    (3, (3, 3), (1, 1), (0, 0), 1),
    (2, (3, 2), (2, 1), (1, 0), 1),
    (3, (2, 3), (1, 2), (1, 1), 1),
    (4, (2, 2), (2, 2), (1, 1), 4),
    (4, (3, 3), (1, 1), (1, 1), 2),
    (4, (2, 2), (2, 2), (0, 0), 4),  # average pooling
]


def _sparse(gen: torch.Generator, density: float = 0.1) -> Sparse:
    x = torch.randn(3, 4, 7, 6, generator=gen, dtype=torch.float64)
    x = x * (torch.rand(x.shape, generator=gen) < density)  # the crossing neurons
    x[2] = 0.0  # a sample with none: only padding
    return Sparse.nonzeros(x)


def _patches(gen: torch.Generator, depthwise: bool, samples: int = 3) -> Patches:
    base = Patches.diagonal(torch.rand(samples, 4, 9, 8, generator=gen, dtype=torch.float64))
    weight = torch.randn(4, 1 if depthwise else 4, 2, 2, generator=gen, dtype=torch.float64)
    return base.conv(weight, (1, 1), (0, 0), 4 if depthwise else 1)


def _padded_patches(gen: torch.Generator, samples: int = 3) -> Patches:
    """Windows with stride and padding: taps fall outside the source on every side."""
    weight = torch.randn(3, 4, 3, 2, generator=gen, dtype=torch.float64)
    return _patches(gen, False, samples).conv(weight, (2, 1), (1, 1), 1)


def _live_patches(gen: torch.Generator, samples: int = 3) -> Patches:
    """Padded windows over a source where most symbols are zero (ReLU symbols of stable
    neurons): the Linear layer gathers the live ones' rows."""
    radius = torch.rand(samples, 4, 9, 8, generator=gen, dtype=torch.float64)
    radius *= torch.rand(radius.shape, generator=gen) < 0.15
    base = Patches.diagonal(radius)
    first = torch.randn(4, 4, 2, 2, generator=gen, dtype=torch.float64)
    second = torch.randn(4, 4, 3, 2, generator=gen, dtype=torch.float64)
    return base.conv(first, (1, 1), (0, 0), 1).conv(second, (2, 1), (1, 1), 1)


def _close(a: Dense, b: Dense) -> bool:
    """Same zonotope: equal support functions sum_g |v . g| in random directions v (zero or
    reordered generators do not count, so a sparse and a window block can be compared)."""
    ga, gb = (d.values().reshape(*d.coef.shape[:2], -1) for d in (a, b))
    v = torch.randn(ga.shape[-1], 16, generator=torch.Generator().manual_seed(9), dtype=ga.dtype)
    return torch.allclose((ga @ v).abs().sum(1), (gb @ v).abs().sum(1), atol=1e-10)


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize(
    "kind",
    ["sparse", "many sparse", "patches", "patches by cell", "live patches by cell",
     "depthwise patches"],
)  # fmt: skip
def test_conv_matches_dense(kind: str, conv: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """("many sparse": enough symbols that the sparse block switches to window patches; "by
    cell": tiles of two rows, so that even these small windows are summed cell by cell; "live":
    one sample whose source has few live symbols, whose rows alone are summed.)"""
    gen = torch.Generator().manual_seed(0)
    gathered = []

    def spied(real):  # noqa: ANN001, ANN202
        return lambda *a: gathered.append(1) or real(*a)

    for name in ("_sum_live_taps", "_pool_live_rows"):
        monkeypatch.setattr(blocks, name, spied(getattr(blocks, name)))
    if "by cell" in kind:
        monkeypatch.setattr(blocks, "TILE_BYTES", 2 * conv[0] * 8)
    if kind == "live patches by cell":
        block = _live_patches(gen, samples=1)
        gathered.clear()  # the test is the last convolution, not those that built the block
    elif "sparse" in kind:
        block = _sparse(gen, 0.9 if kind == "many sparse" else 0.1)
    else:
        block = _patches(gen, kind == "depthwise patches")
    o, k, stride, padding, groups = conv
    weight = torch.randn(o, 4 // groups, *k, generator=gen, dtype=torch.float64)
    out = block.conv(weight, stride, padding, groups)
    want = block.dense().conv(weight, stride, padding, groups)
    assert _close(out.dense(), want)
    # the radius too (summed while the tiles were hot, when by cell), also after a scale
    assert torch.allclose(out.radius(), want.radius(), atol=1e-10)
    if "by cell" in kind and conv[4] == 1:  # the path that sums it on the way
        assert out.abs_sum is not None
    live_path = groups == 1 or (groups == 4 and padding == (0, 0))  # not with padded pooling
    assert bool(gathered) == (kind == "live patches by cell" and live_path)
    s = torch.rand(1, *out.shape, generator=gen, dtype=torch.float64) - 0.5
    assert torch.allclose(out.scale(s).radius(), want.scale(s).radius(), atol=1e-10)


@pytest.mark.parametrize("small_rows", [256, 0])
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize(
    "kind", ["sparse", "patches", "padded patches", "depthwise patches", "live patches"]
)
def test_linear_radius_and_scale_match_dense(
    kind: str, samples: int, small_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(A window block of one sample is multiplied as it lies, several samples' are copied;
    small windows are multiplied all at once, large ones window row by window row; one
    sample's window rows of live symbols only, where few are.)"""
    monkeypatch.setattr(blocks, "SMALL_PRODUCT_ROWS", small_rows)
    gathered = []
    add_live_rows = blocks._add_live_rows
    monkeypatch.setattr(
        blocks, "_add_live_rows", lambda *a: gathered.append(1) or add_live_rows(*a)
    )
    gen = torch.Generator().manual_seed(1)
    if kind == "sparse":
        block = _sparse(gen)
    elif kind == "live patches":
        block = _live_patches(gen, samples)
    elif kind == "padded patches":
        block = _padded_patches(gen, samples)
    else:
        block = _patches(gen, kind == "depthwise patches", samples)
    dense = block.dense()
    n = dense.coef[0, 0].numel()
    weight = torch.randn(5, n, generator=gen, dtype=torch.float64)
    assert _close(block.linear(weight), dense.linear(weight))
    assert torch.allclose(block.radius(), dense.radius())
    s = torch.randn(dense.coef.shape[0], *block.shape, generator=gen, dtype=torch.float64)
    assert _close(block.scale(s).dense(), dense.scale(s))
    assert _close(block.scale(s).linear(weight), dense.scale(s).linear(weight))
    assert _close(dense.scale(s).linear(weight), Dense(dense.scale(s).values()).linear(weight))
    assert bool(gathered) == (kind == "live patches" and samples == 1)


def test_sparse_lists_exactly_the_nonzero_neurons() -> None:
    x = torch.zeros(2, 5)
    x[0, 1], x[0, 3], x[1, 4] = 2.0, -1.0, 3.0
    block = Sparse.nonzeros(x)
    assert block.value.shape == (2, 2)
    assert torch.equal(block.dense().coef.sum(1), x)


def test_l1_over_rows_in_blocks_matches_one_sum() -> None:
    """The radius' row sum gives the same in cache-sized blocks as in one pass, on any strides."""
    x = torch.randn(7, 5, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    strided = x[:, 1:4]  # a corner of a bigger plane, as a convolution's output is
    for rows in (x, strided):
        assert torch.allclose(_l1_over_rows(rows, block=11), rows.abs().sum(0))
