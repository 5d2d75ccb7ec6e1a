"""Run and node config: one source of defaults (the code; pyproject's block generated from it),
every sentinel resolved at parse time, checks across keys at parse time, and errors that name
the key, the value and what is allowed."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel

from cli.config_toml import (
    BEGIN,
    END,
    PYPROJECT,
    differences,
    entries,
    pyproject_defaults,
    render_block,
)
from core.config import ConfigError, NodeConfig, RunConfig, parse_float_list
from core.config_base import sentinel_of
from core.policy_params import params_of, policy_names

DATASETS = ["mnist", "fashion-mnist", "cifar10", "npz"]


def test_pyproject_defaults_are_the_codes_key_by_key() -> None:
    problems = differences(pyproject_defaults())
    assert not problems, "run `python -m cli.config_toml --write`:\n" + "\n".join(problems)


def test_a_differing_default_is_named_with_both_values() -> None:
    flat = {e.key: e.value for e in entries()}
    changed = {**flat, "train.adv-eps": 0.25, "gate.enabled": False, "extra.key": 1}
    del changed["num-rounds"]
    assert sorted(differences(changed)) == [
        "'extra.key' is in pyproject.toml but not in the code",
        "'gate.enabled': pyproject.toml has False, the code's default is True",
        "'num-rounds' is in the code but not in pyproject.toml",
        "'train.adv-eps': pyproject.toml has 0.25, the code's default is 0.1",
    ]
    assert differences({**flat, "agg.tau": 1}) == [  # same number, other TOML type
        "'agg.tau': pyproject.toml has 1, the code's default is 1.0"
    ]


def test_pyproject_block_is_the_generated_text() -> None:
    text = PYPROJECT.read_text()
    block = text[text.index(BEGIN) : text.index("\n", text.index(END)) + 1]
    assert block == render_block(), "run `python -m cli.config_toml --write`"


def test_every_field_has_a_one_line_description_and_sentinels_are_declared() -> None:
    for entry in entries():
        assert entry.description and "\n" not in entry.description, entry.key
    for key, field in _fields(RunConfig.from_flat({})):
        is_sentinel, _, _ = sentinel_of(field)
        # "x -> y" in a description documents a sentinel: it must be declared as one
        assert is_sentinel == ("->" in (field.description or "")), key


def _fields(model: BaseModel, prefix: str = ""):
    """(flat key, FieldInfo) of every leaf field of a parsed config, attack groups included."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name.replace('_', '-')}"
        if isinstance(value, BaseModel):
            yield from _fields(value, f"{key}.")
        else:
            yield key, field


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_sentinel_is_resolved_in_the_parsed_config(dataset: str) -> None:
    cfg = RunConfig.from_flat({"data.dataset": dataset, "data.npz-path": "x.npz"})
    flat = cfg.to_flat()
    parse_time, run_time = [], []
    for key, field in _fields(cfg):
        is_sentinel, sentinel, resolved_in = sentinel_of(field)
        if not is_sentinel:
            continue
        if resolved_in:  # needs a run-time fact: kept, and resolved where the fact exists
            run_time.append(key)
        else:
            parse_time.append(key)
            assert flat[key] != sentinel, f"{key} = {sentinel!r} was not resolved"
    assert sorted(parse_time) == [
        "attack.boost",
        "attack.distill-temperature",
        "attack.edge-fraction",
        "attack.edge-samples",
        "attack.extract-epochs",
        "attack.trigger-magnitude",
        "crfl.agg-weight",
        "crfl.gamma",
        "crfl.lr",
        "crfl.lz",
        "crfl.n-attackers",
        "crfl.poison-fraction",
        "crfl.t-adv",
        "data.dir",
        "data.n-cert",
        "eval.adv-eps",
        "eval.temperature",
        "gate.l-adv",
        "roles.attack-end-round",
        "train.adv-step-size",
    ]
    assert sorted(run_time) == [
        "agg.m", "attack.alie-z", "attack.channel-dir", "crfl.local-iters", "device", "run-name",
        "train.min-nodes",
    ]  # fmt: skip
    assert RunConfig.from_flat(flat) == cfg  # config.json parses back to the same config


@pytest.mark.parametrize(
    ("dataset", "n_cert", "temperature", "trigger", "edge"),
    [("mnist", 1000, 100.0, 0.1, (66, 66 / 166)), ("cifar10", 100, 25.0, 6 / 255, (100, 0.2))],
)
def test_sentinels_resolve_to_what_they_stand_for(
    dataset: str, n_cert: int, temperature: float, trigger: float, edge: tuple
) -> None:
    flat = {"data.dataset": dataset, "train.adv-eps": 0.2, "train.adv-steps": 4,
            "train.clients-per-round": 10, "num-rounds": 20, "roles.malicious-fraction": 0.25,
            "roles.attack-start-round": 5, "train.local-epochs": 3, "train.lr": 0.01}  # fmt: skip
    cfg = RunConfig.from_flat(flat)
    a, c = cfg.attack, cfg.crfl
    assert (cfg.data.n_cert, cfg.train.adv_step_size) == (n_cert, 0.125)
    assert (cfg.eval.adv_eps, cfg.gate.l_adv, cfg.roles.attack_end_round) == (0.2, 0.2, 20)
    assert (a.distill_temperature, cfg.eval.temperature, a.trigger_magnitude) == (
        temperature, temperature, trigger,
    )  # fmt: skip
    assert (a.edge_samples, a.edge_fraction, a.boost, a.extract_epochs) == (*edge, 10.0, 3)
    assert (c.t_adv, c.n_attackers, c.agg_weight, c.gamma, c.lr, c.poison_fraction) == (
        5, 2, 0.1, 1.0, 0.01, 0.3,
    )  # fmt: skip
    assert c.lz == math.sqrt(2 + 2 * 2.5 + 2.5**2)  # rho_5 = min(15, 2 + 0.1 * 5)
    explicit = RunConfig.from_flat({**flat, "eval.adv-eps": 0.3, "eval.temperature": 0.0,
                                    "data.n-cert": 7, "crfl.t-adv": 2, "crfl.lz": 1.5})  # fmt: skip
    assert (explicit.eval.adv_eps, explicit.eval.temperature, explicit.data.n_cert) == (0.3, 0, 7)
    assert (explicit.crfl.t_adv, explicit.crfl.lz) == (2, 1.5)


def test_overrides_reach_nested_sections() -> None:
    cfg = RunConfig.from_flat({"agg.rule": "krum", "agg.f": 2, "train.lr": 0.1, "num-rounds": 7})
    assert (cfg.agg.rule, cfg.agg.f, cfg.train.lr, cfg.num_rounds) == ("krum", 2, 0.1, 7)


@pytest.mark.parametrize(
    ("flat", "fragments"),
    [
        ({"agg.rule": "medain"}, ["'agg.rule'", "'medain'", "'median'", "'krum'"]),
        ({"train.lr": -1.0}, ["'train.lr'", "-1.0", "greater than 0"]),
        ({"data.partition": "zipf"}, ["'data.partition'", "'zipf'", "'dirichlet'"]),
        ({"model.name": "resnet"}, ["'model.name'", "'resnet'", "conv-small"]),
        ({"train.nonsense": 1}, ["'train.nonsense'", "unknown"]),
        ({"agg.beta": 0.5}, ["'agg.beta'", "0.5", "less than 0.5"]),
        ({"attack.nonsense": 1}, ["'attack.nonsense'", "unknown"]),
        # checks across keys, at parse time
        ({"roles.attack": "backdoor", "attack.backdoor-target": 10},
         ["'attack.backdoor-target' = 10", "must be < 10", "mnist"]),
        ({"crfl.enabled": True, "crfl.t-adv": 7},
         ["'crfl.t-adv' resolves to 7", "1..num-rounds (6)"]),
        ({"crfl.enabled": True, "roles.attack-start-round": 9},
         ["'crfl.t-adv' resolves to 9", "roles.attack-start-round"]),
        ({"data.dataset": "npz"}, ["'data.npz-path' = ''", "npz"]),
        ({"roles.attack": "edge-case", "data.dataset": "fashion-mnist"},
         ["'data.dataset' = 'fashion-mnist'", "edge-case", "cifar10, mnist"]),
        ({"roles.attack": "alie", "train.clients-per-round": 1},
         ["'train.clients-per-round' = 1", "at least 2", "attack.alie-z"]),
    ],
)  # fmt: skip
def test_bad_values_name_key_value_and_allowed(flat: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(flat)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_a_key_the_chosen_policy_does_not_read_must_keep_its_default() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat({"roles.attack": "distillation", "attack.boost": 3.0})
    message = str(err.value)
    for fragment in [
        "'attack.boost' = 3.0",
        "not read by policy 'distillation' (roles.attack)",
        "default 5.0",
        "aru, aru-extract, edge-case, replace, targeted-poisoning",
    ]:
        assert fragment in message  # fmt: skip
    assert RunConfig.from_flat({"roles.attack": "replace", "attack.boost": 3.0}).attack.boost == 3
    # a resolved config (config.json) names every key with its default's value: still valid
    backdoor = RunConfig.from_flat({"roles.attack": "backdoor"}).to_flat()
    assert RunConfig.from_flat(backdoor).attack.distill_temperature == 100.0
    # every policy reads the colluders' channel keys
    for name in policy_names():
        assert "channel_dir" in {f for g in params_of(name) for f in g.model_fields}
        RunConfig.from_flat({"roles.attack": name, "attack.rendezvous-s": 3.0})


def test_node_config_checks_partition_range_and_ignores_flower_keys() -> None:
    node = NodeConfig.from_flat({"partition-id": 3, "num-partitions": 4, "flwr-extra": "x"})
    assert (node.partition_id, node.num_partitions, node.role) == (3, 4, "")
    with pytest.raises(ConfigError, match="'partition-id' = 4"):
        NodeConfig.from_flat({"partition-id": 4, "num-partitions": 4})
    with pytest.raises(ConfigError, match="'num-partitions' is required"):
        NodeConfig.from_flat({"partition-id": 0})


def test_float_lists_parse_from_strings() -> None:
    assert parse_float_list("0.1, 0.15,0.25") == (0.1, 0.15, 0.25)
    assert parse_float_list(0.3) == (0.3,)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_float_list("0.1,x")
