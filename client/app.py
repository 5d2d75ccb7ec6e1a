"""The ClientApp: node config -> role -> policy for this round, replying with the trained model.

The role comes from `core.roles.resolve_role` (node config in deployment, a seeded assignment of
partition ids in simulation). A malicious client (client/malicious.py) attacks only inside
the rounds [`roles.attack-start-round`, `roles.attack-end-round`], and only when enough of its
colluders share the round; otherwise it trains benignly. Every role returns a `LocalResult`
(state dict and metrics); only here does it become Flower records: one ArrayRecord (the full
state_dict) and one MetricRecord with `num-examples`. A node whose config or role is bad
(an unregistered policy, a partition id out of range) trains nothing and replies with an error
naming the key, the value and what is allowed, which the server records as that node's failure.
"""

from __future__ import annotations

import functools
from logging import ERROR

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from attacks.registry import load_policies
from client.fl_wbc import fl_wbc_update
from client.local import benign_update, limit_threads
from client.malicious import malicious_update
from core.config import ConfigError, NodeConfig, RunConfig
from core.job import LocalJob, LocalResult
from core.params import state_to_record
from core.policy_params import check_policy_reads
from core.roles import BENIGN, FL_WBC, attack_name, resolve_role
from core.wire import ARRAYS, CONFIG, METRICS, SERVER_ROUND

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _run_config(items: tuple) -> RunConfig:
    """Parse the run config once per process (the ClientApp is called every round)."""
    load_policies()  # registers the policies' names and `attack.*` keys before parsing
    return RunConfig.from_flat(dict(items))


def node_role(cfg: RunConfig, node: NodeConfig) -> str:
    """This node's role; a policy its node config chooses must read every `attack.*` key
    the run config sets (roles.attack's policy was checked when the config was parsed)."""
    role = resolve_role(node, cfg.roles, cfg.seed)
    name = attack_name(role)
    if node.role and name is not None and name != cfg.roles.attack:
        check_policy_reads(cfg, name, "node config key 'role'")
    return role


def local_update(role: str, job: LocalJob, run_id: int) -> LocalResult:
    """The reply of a client of `role` in this round."""
    name = attack_name(role)
    if name is not None:
        return malicious_update(job, name, run_id)
    if role == BENIGN:
        return benign_update(job)
    if role == FL_WBC:
        return fl_wbc_update(job)
    raise NotImplementedError(f"role {role!r} has no client policy in this version")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally according to this node's role and reply with the model."""
    limit_threads()
    try:
        cfg = _run_config(tuple(sorted(context.run_config.items())))
        node = NodeConfig.from_flat(context.node_config)
        role = node_role(cfg, node)
    except ConfigError as err:
        log(ERROR, "[certfl] this node does not train: %s", err)
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"bad config: {err}")
        return Message(error, reply_to=msg)
    job = LocalJob(
        cfg=cfg,
        node=node,
        global_arrays=msg.content.array_records[ARRAYS],
        server_round=int(msg.content[CONFIG][SERVER_ROUND]),
    )
    result = local_update(role, job, context.run_id)
    content = {ARRAYS: state_to_record(result.state), METRICS: MetricRecord(result.metrics)}
    return Message(RecordDict(content), reply_to=msg)
