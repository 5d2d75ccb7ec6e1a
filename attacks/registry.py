"""Malicious client policies, found by name: `attack:<name>` in node config or `roles.attack`.

A policy takes the round's `LocalJob` and the round's `Coalition` (the colluders present, and
the channel they share) and returns the reply content (model, metrics). Each lives in its own
module and registers itself with `@register("<name>", params=...)`, naming the parameter groups
(`core.policy_params.PolicyParams`, declared next to the code that reads them) whose `attack.*`
keys it reads. `load_policies()` imports every policy module; the server and client apps (and
the `certfl` command) call it before they parse a run config, which is what makes the `attack.*`
keys and the policy names known to `core.config`. A policy registered with `coalition=True`
needs its partners (shared models, their count) and always goes through the colluders'
rendezvous; the others act alone unless `roles.min-colluders` > 1.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from attacks.collusion import Coalition
from core.job import LocalJob, LocalResult
from core.policy_params import PolicyParams, check_policy_name, declare_policy
from core.roles import validate_role

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


def register(
    name: str, coalition: bool = False, params: tuple[type[PolicyParams], ...] = ()
) -> Callable[[PolicyFn], PolicyFn]:
    """Decorator: register the decorated function as policy `name`, reading the `attack.*` keys
    of the groups `params` (and of the common ones: the colluders' channel)."""

    def add(fn: PolicyFn) -> PolicyFn:
        if name in POLICIES:
            raise ValueError(f"attack policy {name!r} registered twice")
        declare_policy(name, params)
        POLICIES[name] = Policy(name, fn, coalition)
        return fn

    return add


def load_policies() -> list[str]:
    """Import every policy module (registering its name and parameters); their names, sorted."""
    for module in _MODULES:
        importlib.import_module(module)
    return sorted(POLICIES)


def policy(name: str) -> Policy:
    """The policy registered as `name`; ConfigError listing the known ones otherwise."""
    load_policies()
    check_policy_name(name, "attack policy")
    return POLICIES[name]


def check_role(role: str, where: str = "node config key 'role'") -> str:
    """`role` if it is benign, fl-wbc or `attack:<a registered policy>`; else a ConfigError
    naming `where`, the role and what is allowed (the policies are registered first)."""
    load_policies()
    return validate_role(role, where)
