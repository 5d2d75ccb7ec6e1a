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
from core.config import ConfigError, RunConfig
from core.job import LocalJob, LocalResult
from core.roles import ATTACK_PREFIX, BENIGN, FL_WBC, attack_name, validate_role

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


def allowed_roles() -> str:
    """The roles a node may have, in words: benign, fl-wbc, attack:<each registered policy>."""
    return ", ".join([BENIGN, FL_WBC] + [ATTACK_PREFIX + name for name in known_policies()])


def check_role(role: str, where: str = "node config key 'role'") -> str:
    """`role` if it names a known role and, for `attack:<policy>`, a registered policy; else a
    ConfigError naming `where`, the role and every allowed one."""
    try:
        validate_role(role)
    except ConfigError:
        raise ConfigError(f"{where} = {role!r}: unknown role; allowed: {allowed_roles()}") from None
    name = attack_name(role)
    if name is not None and name not in known_policies():
        raise ConfigError(
            f"{where} = {role!r}: no attack policy {name!r} is registered; "
            f"allowed: {allowed_roles()}"
        )
    return role


def check_run_roles(cfg: RunConfig) -> None:
    """ConfigError naming the key when `roles.attack` names no registered policy."""
    if cfg.roles.attack and cfg.roles.attack not in known_policies():
        raise ConfigError(
            f"run config key 'roles.attack' = {cfg.roles.attack!r}: unknown policy; "
            f"allowed: {', '.join(known_policies())}"
        )
