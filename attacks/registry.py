"""Malicious client policies, found by name: `attack:<name>` in node config or `roles.attack`.

A policy takes the round's `LocalJob` and the round's `Coalition` (the colluders present, and
the channel they share) and returns the reply content (model, metrics). Each lives in its own
module and registers itself with `@register("<name>")`; `policy(name)` imports them. A policy
registered with `coalition=True` needs its partners (shared models, their count) and always
goes through the colluders' rendezvous; the others act alone unless `roles.min-colluders` > 1.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from attacks.collusion import Coalition
from core.config import ConfigError
from core.job import LocalJob, LocalResult

PolicyFn = Callable[[LocalJob, Coalition], LocalResult]


@dataclass(frozen=True)
class Policy:
    """A registered attack policy and whether it needs the colluders' rendezvous."""

    name: str
    run: PolicyFn
    coalition: bool


POLICIES: dict[str, Policy] = {}
_MODULES = (
    "attacks.logit_scaling",
    "attacks.backdoor",
    "attacks.edge_case",
    "attacks.distillation",
    "attacks.adaptive_cert",
    "attacks.targeted_poisoning",
    "attacks.replace",
    "attacks.aru",
    "attacks.aru_extract",
    "attacks.byzantine",
)


def register(name: str, coalition: bool = False) -> Callable[[PolicyFn], PolicyFn]:
    """Decorator: register the decorated function as policy `name`."""

    def add(fn: PolicyFn) -> PolicyFn:
        if name in POLICIES:
            raise ValueError(f"attack policy {name!r} registered twice")
        POLICIES[name] = Policy(name, fn, coalition)
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
