"""The parameters of plugged-in client policies, declared and registered by the code reading them.

`core` knows no attack. Each policy module (attacks/) declares its parameters as a
`PolicyParams` subclass, whose fields are the run-config keys `attack.<field>`, and registers
its policy name with the groups it reads (`declare_policy`, called by `attacks.registry.register`);
a group that several policies read (boosting) is declared once and named by each, a group that
every policy reads (the colluders' channel) is declared `common`. The run config's `attack`
section is the union of every registered group (`attack_section`), so the keys stay flat and
unique. The server and client apps register the policies (`attacks.registry.load_policies()`)
before they parse a config; a config naming an `attack.*` key or a policy nobody registered
fails, naming it.

A group resolves its own sentinels (`resolve`), may supply the value a core sentinel stands for
(`fills`: `eval.temperature` -1 means the distillation temperature), and checks its values
against the rest of the run config (`check`). When a policy is chosen, every `attack.*` key it
does not read must keep its default (`check_policy_reads`): a setting it would ignore is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import create_model

from core.config_base import ConfigError, Section, hyphenate

if TYPE_CHECKING:
    from core.config import RunConfig


class PolicyParams(Section):
    """Base of a group of `attack.*` keys that one or more policies read.

    Subclasses declare fields with `core.config_base.param` and may override the class methods
    below; the parsed run config holds one object that is an instance of every registered group.
    """

    # core sentinel key -> the field of this group whose resolved value it stands for
    fills: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def resolve(cls, params: Self, cfg: RunConfig) -> dict[str, Any]:
        """The concrete values (by field name) of this group's sentinels in `params`.

        `cfg` is the run config being parsed: its sections resolve their own sentinels first,
        so anything but a cross-section sentinel (`eval.*`, `gate.l-adv`, `crfl.*`) is concrete.
        """
        return {}

    @classmethod
    def check(cls, params: Self, cfg: RunConfig, chosen: bool) -> None:
        """Raise ConfigError, naming key, value and what is allowed, if `params` (resolved) do
        not fit `cfg`; `chosen`: a policy that reads this group is the run's."""

    @classmethod
    def of(cls, cfg: RunConfig) -> Self:
        """This group's view of the run's attack parameters (the section holds every group)."""
        params = cfg.attack
        if not isinstance(params, cls):
            raise ConfigError(f"{cls.__name__} was registered after this config was parsed")
        return params


_GROUPS: list[type[PolicyParams]] = []
_COMMON: list[type[PolicyParams]] = []
_POLICIES: dict[str, tuple[type[PolicyParams], ...]] = {}
_SECTION: dict[tuple[type[PolicyParams], ...], type[PolicyParams]] = {}


def declare_params(*groups: type[PolicyParams], common: bool = False) -> None:
    """Register parameter groups (again: no-op); `common`: every policy reads them."""
    for group in groups:
        if group in _GROUPS:
            continue
        for other in _GROUPS:
            shared = set(group.model_fields) & set(other.model_fields)
            if shared:
                keys = ", ".join(f"attack.{hyphenate(k)}" for k in sorted(shared))
                raise ValueError(
                    f"{keys} declared by both {other.__qualname__} and {group.__qualname__}: "
                    "declare a shared parameter once, in one group that both policies name"
                )
        _GROUPS.append(group)
        if common:
            _COMMON.append(group)


def declare_policy(name: str, groups: tuple[type[PolicyParams], ...] = ()) -> None:
    """Register policy `name` as reading `groups` (plus the common ones)."""
    if name in _POLICIES:
        raise ValueError(f"policy {name!r} declared twice")
    declare_params(*groups)
    _POLICIES[name] = tuple(groups)


def policy_names() -> list[str]:
    """Every registered policy, sorted."""
    return sorted(_POLICIES)


def params_of(policy: str) -> tuple[type[PolicyParams], ...]:
    """The groups policy `policy` reads: its own and the common ones."""
    own = _POLICIES[policy]
    return own + tuple(group for group in _COMMON if group not in own)


def registered_groups() -> tuple[type[PolicyParams], ...]:
    """Every registered group in a fixed order (module, then class name)."""
    return tuple(sorted(_GROUPS, key=lambda group: (group.__module__, group.__qualname__)))


def attack_section() -> type[PolicyParams]:
    """The `attack` section: one model holding the fields of every registered group."""
    groups = registered_groups()
    if not groups:
        return PolicyParams
    if groups not in _SECTION:
        _SECTION[groups] = create_model(
            "AttackConfig",
            __base__=tuple(reversed(groups)),  # the first group's keys come first
            __doc__="Parameters of the registered policies (attacks/), each group by its code.",
        )
    return _SECTION[groups]


def check_policy_name(name: str, where: str) -> None:
    """ConfigError naming `where` (e.g. "run config key 'roles.attack'"), the value and the
    registered policies, unless `name` is one."""
    if name in _POLICIES:
        return
    if not _POLICIES:
        raise ConfigError(
            f"{where} = {name!r}: no policies are registered; the app registers them "
            "(attacks.registry.load_policies()) before it parses a config"
        )
    raise ConfigError(f"{where} = {name!r}: unknown policy; allowed: {', '.join(policy_names())}")


def resolved_defaults(group: type[PolicyParams], cfg: RunConfig) -> dict[str, Any]:
    """What `group`'s fields are when left at their defaults in run config `cfg`."""
    defaults = group()
    return {**dict(defaults), **group.resolve(defaults, cfg)}


def check_policy_reads(cfg: RunConfig, policy: str, where: str) -> None:
    """ConfigError listing every `attack.*` key that `policy` (chosen by `where`) does not read
    but that `cfg` sets to something other than its default."""
    reads = params_of(policy)
    errors = []
    for group in registered_groups():
        if group in reads:
            continue
        for name, default in resolved_defaults(group, cfg).items():
            value = getattr(cfg.attack, name)
            if value != default:
                readers = [p for p in policy_names() if group in params_of(p)]
                errors.append(
                    f"run config key 'attack.{hyphenate(name)}' = {value!r} is not read by "
                    f"policy {policy!r} ({where}); leave it at its default {default!r}, or "
                    f"choose a policy that reads it: {', '.join(readers)}"
                )
    if errors:
        raise ConfigError("; ".join(errors))
