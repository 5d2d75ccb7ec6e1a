"""The malicious role: join the colluders of this round, run the policy or blend in, record it.

A colluder outside the attack window, or in a round with fewer than `roles.min-colluders` of
its coalition sampled, trains like a benign client. What it did is appended to the colluders'
ground-truth ledger, which only evaluation reads.
"""

from __future__ import annotations

from logging import WARNING

from flwr.supercore import log

from attacks.collusion import ChannelError, Coalition, open_channel
from attacks.registry import policy
from client.local import benign_update
from core.config import RolesConfig
from core.job import LocalJob, LocalResult


def attack_active(roles: RolesConfig, server_round: int) -> bool:
    """Whether malicious clients attack in `server_round`."""
    return roles.attack_start_round <= server_round <= roles.attack_end_round


def malicious_update(job: LocalJob, name: str, run_id: int) -> LocalResult:
    """The reply of a colluder following policy `name` in this round."""
    if not attack_active(job.cfg.roles, job.server_round):
        return benign_update(job)
    chosen = policy(name)
    channel = open_channel(job.cfg, run_id)
    me = job.node.partition_id
    if chosen.coalition or channel.min_colluders > 1:
        coalition = channel.join(job.server_round, me)
    else:
        coalition = Coalition.alone(job.server_round, me)
    error = ""
    if coalition.attack:
        try:
            reply = chosen.run(job, coalition)
        except ChannelError as err:  # a partner vanished: blend in rather than reply nothing
            log(WARNING, "[certfl] colluder %d: %s; training benignly", me, err)
            error, reply = str(err), benign_update(job)
    else:
        reply = benign_update(job)
    channel.record(
        {
            "round": job.server_round,
            "partition_id": me,
            "policy": name,
            "attacked": coalition.attack and not error,
            "coalition": list(coalition.members),
            "error": error,
        }
    )
    return reply
