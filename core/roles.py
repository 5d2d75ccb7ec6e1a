"""Client roles: `benign`, `fl-wbc` or `attack:<policy>`, from node config or a seeded assignment.

In deployment each SuperNode's node config names its role. In simulation the virtual clients have
no such config, so the roles come from a seeded permutation of the partition ids. Both paths go
through `resolve_role`, and only clients call it: the server never learns who is malicious.
"""

from __future__ import annotations

import numpy as np

from core.config import ConfigError, NodeConfig, RolesConfig
from core.policy_params import check_policy_name, policy_names

BENIGN = "benign"
FL_WBC = "fl-wbc"
ATTACK_PREFIX = "attack:"


def validate_role(role: str, where: str = "node config key 'role'") -> str:
    """Return `role` if it is benign, fl-wbc or `attack:<a registered policy>`, else raise
    ConfigError naming `where`, the role and every allowed role."""
    if role in (BENIGN, FL_WBC):
        return role
    name = attack_name(role)
    if name is None:
        raise ConfigError(f"{where} = {role!r}: unknown role; allowed: {allowed_roles()}")
    if not policy_names():  # nothing registered yet: say so, not "unknown"
        check_policy_name(name, f"{where} = {role!r}: policy")
    if name not in policy_names():
        raise ConfigError(
            f"{where} = {role!r}: no attack policy {name!r} is registered; "
            f"allowed: {allowed_roles()}"
        )
    return role


def allowed_roles() -> str:
    """The roles a node may have, in words: benign, fl-wbc, attack:<each registered policy>."""
    return ", ".join([BENIGN, FL_WBC] + [ATTACK_PREFIX + name for name in policy_names()])


def attack_name(role: str) -> str | None:
    """The policy name of an `attack:<policy>` role, else None."""
    return role[len(ATTACK_PREFIX) :] if role.startswith(ATTACK_PREFIX) else None


def assign_roles(num_partitions: int, cfg: RolesConfig, seed: int) -> list[str]:
    """Seeded roles of all partitions: round(fraction * N) malicious, then FL-WBC, rest benign."""
    n_mal = round(cfg.malicious_fraction * num_partitions)
    n_wbc = round(cfg.fl_wbc_fraction * num_partitions)
    if n_mal + n_wbc > num_partitions:  # fractions within 1 (checked at parse) can round over
        raise ConfigError(
            f"roles.malicious-fraction ({cfg.malicious_fraction}) + roles.fl-wbc-fraction "
            f"({cfg.fl_wbc_fraction}) round to {n_mal} + {n_wbc} of {num_partitions} partitions"
        )
    order = np.random.default_rng([seed, 0x501E5]).permutation(num_partitions)
    roles = [BENIGN] * num_partitions
    for pid in order[:n_mal]:
        roles[pid] = ATTACK_PREFIX + cfg.attack
    for pid in order[n_mal : n_mal + n_wbc]:
        roles[pid] = FL_WBC
    return roles


def resolve_role(node: NodeConfig, cfg: RolesConfig, seed: int) -> str:
    """The node's role: its node config's `role` if set, else the seeded simulation assignment."""
    if node.role:  # validated when the node config was parsed
        return node.role
    return assign_roles(node.num_partitions, cfg, seed)[node.partition_id]
