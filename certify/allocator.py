"""Keep freed memory in the process heap, so that the certifier's large temporaries reuse it.

glibc serves every allocation above its mmap threshold (128 KiB at first, raised dynamically up
to 32 MiB) with fresh pages from the kernel and returns them on free; the zonotope's window
blocks and canvases are megabytes each (100+ MiB per CIFAR-10 sample) and short-lived, so
without this every layer pays page faults and zeroing again. `retain_freed_memory` turns glibc's
mmap off (M_MMAP_MAX 0, and the threshold at its maximum) and trims the heap's top only past
1 GiB, so freed blocks of any size serve the next chunk: conv-small on MNIST at eps 0.1
certifies about 1.3x faster on one thread, cifar-cnn on CIFAR-10 at 8/255 about 1.25x
(bench/certify_layers.py, `this, default malloc`). The cost is up to 1 GiB of freed memory the
process keeps instead of returning (in practice what the certifier peaked at: one chunk's
working set). A thread whose arena cannot grow falls back to the main heap. A no-op where the
C library is not glibc.

`empty` and `zeros` advise blocks past 32 MiB into transparent huge pages before anything
touches them: where the heap grows (or the kernel reclaimed idle pages), the first touch faults
once per 2 MiB instead of once per 4 KiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's upper limit on 64-bit
TRIM_THRESHOLD_BYTES = 1024 * 2**20
MADV_HUGEPAGE = 14  # linux/mman.h
PAGE_BYTES = 4096


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


@functools.cache
def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (once per process); True when they were set."""
    try:
        mallopt = _libc().mallopt
    except AttributeError:  # no C library, or not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        and mallopt(M_MMAP_MAX, 0)
    )


@functools.cache
def _madvise() -> ctypes._CFuncPtr | None:
    try:
        madvise = _libc().madvise
    except AttributeError:
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """`like.new_empty(*shape)`; on the CPU a block past the mmap threshold is advised into
    transparent huge pages before anything touches it (a hint: where the kernel declines,
    nothing changes)."""
    out = like.new_empty(*shape)
    madvise = _madvise()
    if out.device.type == "cpu" and out.nbytes > MMAP_THRESHOLD_BYTES and madvise is not None:
        start = -(-out.data_ptr() // PAGE_BYTES) * PAGE_BYTES
        end = (out.data_ptr() + out.nbytes) // PAGE_BYTES * PAGE_BYTES
        madvise(start, end - start, MADV_HUGEPAGE)
    return out


def zeros(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """`like.new_zeros(*shape)`, through `empty`."""
    return empty(like, *shape).zero_()
