"""The ClientApp: node config -> role -> policy for this round, replying with the trained model.

The role comes from `core.roles.resolve_role` (node config in deployment, a seeded assignment of
partition ids in simulation). A malicious client attacks only inside the rounds
[`roles.attack-start-round`, `roles.attack-end-round`] and trains benignly outside them. The
reply holds one ArrayRecord (the full state_dict) and one MetricRecord with `num-examples`.
"""

from __future__ import annotations

import functools

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from attacks.registry import Policy, policy
from client.local import benign_update, limit_threads
from core.config import NodeConfig, RolesConfig, RunConfig
from core.job import LocalJob
from core.roles import BENIGN, attack_name, resolve_role

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _run_config(items: tuple) -> RunConfig:
    """Parse the run config once per process (the ClientApp is called every round)."""
    return RunConfig.from_flat(dict(items))


def attack_active(roles: RolesConfig, server_round: int) -> bool:
    """Whether malicious clients attack in `server_round`."""
    end = roles.attack_end_round or server_round
    return roles.attack_start_round <= server_round <= end


def policy_for(role: str, cfg: RunConfig, server_round: int) -> Policy:
    """The policy a client of `role` follows in `server_round`."""
    name = attack_name(role)
    if name is not None:
        return policy(name) if attack_active(cfg.roles, server_round) else benign_update
    if role == BENIGN:
        return benign_update
    raise NotImplementedError(f"role {role!r} has no client policy in this version")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally according to this node's role and reply with the model."""
    limit_threads()
    cfg = _run_config(tuple(sorted(context.run_config.items())))
    node = NodeConfig.from_flat(context.node_config)
    role = resolve_role(node, cfg.roles, cfg.seed)
    job = LocalJob(
        cfg=cfg,
        node=node,
        global_arrays=next(iter(msg.content.array_records.values())),
        server_round=int(msg.content["config"]["server-round"]),
    )
    arrays, metrics = policy_for(role, cfg, job.server_round)(job)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
