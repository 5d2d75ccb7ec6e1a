"""Malicious client policies, found by name: `attack:<name>` in node config or `roles.attack`.

A policy takes the round's `LocalJob` and returns the reply content (model, metrics). Each lives
in its own module and registers itself with `@register("<name>")`; `policy(name)` imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flwr.app import ArrayRecord, MetricRecord

from core.config import ConfigError
from core.job import LocalJob

Policy = Callable[[LocalJob], tuple[ArrayRecord, MetricRecord]]
POLICIES: dict[str, Policy] = {}
_MODULES = ("attacks.logit_scaling",)


def register(name: str) -> Callable[[Policy], Policy]:
    """Decorator: register the decorated policy under `name`."""

    def add(fn: Policy) -> Policy:
        if name in POLICIES:
            raise ValueError(f"attack policy {name!r} registered twice")
        POLICIES[name] = fn
        return fn

    return add


def known_policies() -> list[str]:
    """The names of every registered policy, sorted."""
    for module in _MODULES:
        importlib.import_module(module)
    return sorted(POLICIES)


def policy(name: str) -> Policy:
    """The policy registered as `name`; ConfigError listing the known ones otherwise."""
    if name not in known_policies():
        raise ConfigError(f"unknown attack policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name]
