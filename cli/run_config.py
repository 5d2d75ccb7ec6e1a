"""Run-config overrides as the certfl commands pass them to `flwr run`: merged into one TOML file.

Flower 1.36 parses each `--run-config` string into a nested dict and merges the strings with a
shallow `dict.update` (`flwr/common/config.py`, `parse_config_args`): a later
`"train.min-nodes=4"` replaces the whole `train` table of an earlier `"train.lr=0.1"`, so
overrides that share a table prefix are silently lost. Here every string is flattened on its own
(dotted keys) and the flat dicts are merged key by key, later strings winning; the result goes to
`flwr run` as ONE TOML file, which also carries any string value exactly. The merged overrides
are validated against the app's defaults before any process starts.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.common.config import flatten_dict, parse_config_args

from attacks.registry import load_policies
from core.config import ConfigError, RunConfig

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def merge_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Merge `--run-config` strings (`"k=v k2=v2"`, or a path to a .toml file) into one flat
    dict of dotted keys; a key given again later wins, other keys are kept.

    >>> merge_overrides(["train.lr=0.1 train.local-epochs=1", "train.min-nodes=4"])
    {'train.lr': 0.1, 'train.local-epochs': 1, 'train.min-nodes': 4}
    """
    flat: dict[str, Any] = {}
    for text in overrides:
        try:
            flat.update(parse_config_args([text]))  # one string: nested tables, then flattened
        except Exception as err:  # a click.ClickException or tomllib's error: say which string
            message = getattr(err, "message", None) or str(err)
            raise ConfigError(f"run config override {text!r}: {message}") from None
    return flat


def toml_document(flat: Mapping[str, Any]) -> str:
    """`flat` (dotted keys, scalar values) as a TOML document Flower reads back into the same
    flat dict.

    >>> print(toml_document({"train.lr": 0.1, "output-dir": "/tmp/a b", "gate.enabled": False}))
    train.lr = 0.1
    output-dir = "/tmp/a b"
    gate.enabled = false
    <BLANKLINE>
    """
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in flat.items()]
    return "\n".join(lines) + "\n"


def write_overrides(overrides: Sequence[str], path: Path) -> dict[str, Any]:
    """Merge `overrides` and write them to `path` as TOML for `flwr run --run-config PATH`;
    return the merged flat dict."""
    flat = merge_overrides(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_document(flat), encoding="utf-8")
    return flat


def app_defaults(app: Path) -> dict[str, Any]:
    """The run config defaults of the Flower app in `app` (`[tool.flwr.app.config]`), flat."""
    pyproject = app / "pyproject.toml"
    try:
        with pyproject.open("rb") as f:
            return flatten_dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{pyproject}: no readable [tool.flwr.app.config] ({err})") from None


def resolve(app: Path, flat_overrides: Mapping[str, Any]) -> RunConfig:
    """The run config the ServerApp will see: `app`'s defaults with the overrides, validated
    (ConfigError naming the key, the value and what is allowed), including `roles.attack`."""
    load_policies()  # the policies' names and `attack.*` keys, before the config is parsed
    return RunConfig.from_flat({**app_defaults(app), **flat_overrides})


def _toml_key(key: str) -> str:
    return ".".join(p if _BARE_KEY.match(p) else json.dumps(p) for p in key.split("."))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    raise ConfigError(f"run config value {value!r}: not a bool, number or string")


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
