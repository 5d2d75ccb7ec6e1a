"""A node's own `attack:<policy>` role is checked like `roles.attack`: every `attack.*` key the
run config sets must be one that policy reads."""

from __future__ import annotations

import pytest

from client.app import node_role
from core.config import ConfigError, NodeConfig, RunConfig


def _node(role: str = "") -> NodeConfig:
    return NodeConfig.from_flat({"partition-id": 0, "num-partitions": 4, "role": role})


def test_a_node_policy_that_ignores_a_set_key_is_refused_naming_it() -> None:
    cfg = RunConfig.from_flat({"roles.attack": "replace", "attack.boost": 3.0})
    assert node_role(cfg, _node("attack:aru")) == "attack:aru"  # aru boosts too
    assert node_role(cfg, _node("benign")) == "benign"
    with pytest.raises(
        ConfigError,
        match=r"'attack.boost' = 3.0 is not read by policy "
        r"'distillation' \(node config key 'role'\)",
    ):
        node_role(cfg, _node("attack:distillation"))
    everyone = RunConfig.from_flat({"roles.attack": "replace", "roles.malicious-fraction": 1.0})
    assert node_role(everyone, _node()) == "attack:replace"  # the seeded simulation assignment
