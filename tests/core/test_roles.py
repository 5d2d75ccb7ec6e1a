"""Roles: seeded assignment, node-config precedence, and validation."""

from __future__ import annotations

import pytest

from core.config import ConfigError, NodeConfig, RolesConfig, RunConfig
from core.roles import assign_roles, attack_name, resolve_role, validate_role


def test_assignment_is_seeded_and_counts_match_fractions() -> None:
    cfg = RolesConfig(malicious_fraction=0.35, attack="distillation", fl_wbc_fraction=0.1)
    roles = assign_roles(500, cfg, seed=3)
    assert roles == assign_roles(500, cfg, seed=3)
    assert roles != assign_roles(500, cfg, seed=4)
    assert roles.count("attack:distillation") == 175
    assert roles.count("fl-wbc") == 50
    assert roles.count("benign") == 275


def test_node_config_role_wins_over_assignment() -> None:
    cfg = RolesConfig(malicious_fraction=1.0, attack="backdoor")
    node = NodeConfig(partition_id=0, num_partitions=4, role="benign")
    assert resolve_role(node, cfg, seed=0) == "benign"
    assert (
        resolve_role(NodeConfig(partition_id=0, num_partitions=4), cfg, seed=0) == "attack:backdoor"
    )


def test_bad_roles_and_missing_attack_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="'role' = 'evil'"):
        validate_role("evil")
    with pytest.raises(ConfigError, match="'role' = 'attack:evil'.*allowed"):
        validate_role("attack:evil")
    with pytest.raises(ConfigError, match=r"'roles.malicious-fraction' = 0.5 needs 'roles.attack'"):
        RunConfig.from_flat({"roles.malicious-fraction": 0.5, "roles.attack": ""})
    with pytest.raises(ConfigError, match="exceed 1"):
        RunConfig.from_flat({"roles.malicious-fraction": 0.6, "roles.fl-wbc-fraction": 0.6})
    # fractions within 1 can still round over the partitions: 2 + 2 of 3
    with pytest.raises(ConfigError, match="round to 2 \\+ 2 of 3"):
        assign_roles(3, RolesConfig(malicious_fraction=0.5, fl_wbc_fraction=0.5), seed=0)
    assert attack_name("attack:replace") == "replace" and attack_name("benign") is None
