"""The certifier's allocator setting is accepted by glibc (a threshold above its limit is not)."""

from __future__ import annotations

import platform

import pytest

from certify.allocator import retain_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_accepts_both_thresholds_once_per_process() -> None:
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # cached: set once, same answer
