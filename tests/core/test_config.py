"""Run and node config: parsing, defaults in pyproject, and errors that name key, value, allowed."""

from __future__ import annotations

import tomllib

import pytest
from flwr.common.config import flatten_dict

from core.config import ConfigError, NodeConfig, RunConfig, parse_float_list
from tests.conftest import REPO


def test_pyproject_defaults_cover_every_key_and_validate() -> None:
    with open(REPO / "pyproject.toml", "rb") as f:
        flat = flatten_dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
    assert set(flat) == set(RunConfig().to_flat())
    cfg = RunConfig.from_flat(flat)
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    assert cfg.model.name == flat["model.name"] and cfg.agg.rule == flat["agg.rule"]


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
    ],
)
def test_bad_values_name_key_value_and_allowed(flat: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(flat)
    for fragment in fragments:
        assert fragment in str(err.value)


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
