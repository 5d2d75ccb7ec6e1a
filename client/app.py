"""The ClientApp: node config -> role -> local training, replying with the trained model.

The role comes from `core.roles.resolve_role` (node config in deployment, a seeded assignment of
partition ids in simulation). The reply holds one ArrayRecord (the full state_dict) and one
MetricRecord with `num-examples` and `train-loss`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local import LocalJob, benign_update
from core.config import NodeConfig, RunConfig
from core.roles import BENIGN, resolve_role

app = ClientApp()

Policy = Callable[[LocalJob], tuple[ArrayRecord, MetricRecord]]
POLICIES: dict[str, Policy] = {BENIGN: benign_update}


@functools.lru_cache(maxsize=4)
def _run_config(items: tuple) -> RunConfig:
    """Parse the run config once per process (the ClientApp is called every round)."""
    return RunConfig.from_flat(dict(items))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally according to this node's role and reply with the model."""
    cfg = _run_config(tuple(sorted(context.run_config.items())))
    node = NodeConfig.from_flat(context.node_config)
    role = resolve_role(node, cfg.roles, cfg.seed)
    policy = POLICIES.get(role)
    if policy is None:
        raise NotImplementedError(
            f"role {role!r} of partition {node.partition_id} has no client policy in this "
            f"version; available: {sorted(POLICIES)}"
        )
    job = LocalJob(
        cfg=cfg,
        node=node,
        global_arrays=next(iter(msg.content.array_records.values())),
        server_round=int(msg.content["config"]["server-round"]),
    )
    arrays, metrics = policy(job)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
