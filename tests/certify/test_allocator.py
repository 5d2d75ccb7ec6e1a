"""glibc accepts the certifier's allocator settings; its fresh blocks are what was asked."""

from __future__ import annotations

import platform

import pytest
import torch

from certify.allocator import empty, retain_freed_memory, zeros


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_accepts_both_thresholds_once_per_process() -> None:
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # cached: set once, same answer


def test_blocks_advised_into_huge_pages_are_zeros_of_the_asked_shape() -> None:
    like = torch.ones(1, dtype=torch.float32)
    big = zeros(like, 3, 3 * 2**20 + 1)  # past 32 MiB: advised before the first touch
    assert big.shape == (3, 3 * 2**20 + 1) and big.dtype == torch.float32
    assert not big.any()
    assert empty(like, 5, 7).shape == (5, 7)
