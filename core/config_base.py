"""The building blocks of every config section: hyphenated keys, one-line descriptions, sentinels.

A config field is declared with `param(default, description, **constraints)`: the default, a
one-line description and pydantic's constraints (`ge=0`, ...) in one place, the code. The
`[tool.flwr.app.config]` block of pyproject.toml is generated from these declarations
(`python -m cli.config_toml --write`).

A *sentinel* is a default that stands for another value ("-1 -> train.adv-eps"): declare it with
`param(..., sentinel=value)`, resolve it when the config is parsed, and every consumer reads the
concrete value. The few that need a fact that only exists at run time (the Flower run id, a
client's data) say where they are resolved with `resolved_in=`; they keep their sentinel in the
parsed config.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

_UNSET: Any = object()


class ConfigError(ValueError):
    """A run or node config value that is unknown, mistyped or out of range."""


def hyphenate(name: str) -> str:
    """A field name as a config key: `adv_eps` -> `adv-eps`."""
    return name.replace("_", "-")


class Section(BaseModel):
    """Base of every config section: hyphenated keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=hyphenate, populate_by_name=True, extra="forbid", frozen=True
    )


def param(
    default: Any,
    description: str,
    *,
    sentinel: Any = _UNSET,
    resolved_in: str = "",
    **constraints: Any,
) -> Any:
    """A config field: its default, a one-line description and pydantic constraints.

    `sentinel`: the value that stands for another one (usually the default), resolved when the
    config is parsed; `resolved_in`: where it is resolved instead, for the few that need a
    run-time fact (then the parsed config keeps the sentinel).
    """
    if "\n" in description:
        raise ValueError(f"a config description is one line, got {description!r}")
    extra = None
    if sentinel is not _UNSET:
        extra = {"sentinel": sentinel, "resolved_in": resolved_in}
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def sentinel_of(field: FieldInfo) -> tuple[bool, Any, str]:
    """(is a sentinel field, its sentinel value, where it is resolved at run time or "")."""
    extra = field.json_schema_extra
    if not isinstance(extra, dict) or "sentinel" not in extra:
        return False, None, ""
    return True, extra["sentinel"], str(extra.get("resolved_in", ""))


def parse_float_list(value: Any) -> tuple[float, ...]:
    """Parse "0.1,0.15" (Flower configs hold scalars only) or a sequence into floats."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(f"expected comma-separated numbers, got {value!r}") from None
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value)


def positive_radii(value: Any, allow_empty: bool) -> tuple[float, ...]:
    """Certification radii from "0.1,0.15": each > 0, at least one unless `allow_empty`."""
    radii = parse_float_list(value)
    if (not radii and not allow_empty) or any(r <= 0 for r in radii):
        raise ValueError("expected one or more radii > 0, e.g. '0.1,0.15'")
    return radii
