"""Every module's doctests run: the examples in docstrings are part of the documentation, and a
wrong one is a bug."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

from tests.conftest import REPO

PACKAGES = ("core", "certify", "attacks", "strategies", "server", "client", "cli")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        for info in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}."):
            names.append(info.name)
    return sorted(names)


def test_every_package_is_searched() -> None:
    found = _modules()
    assert "strategies.aggregators" in found and "certify.transformers" in found
    assert len(found) > 40


@pytest.mark.parametrize("name", _modules())
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests failed in {name}"
