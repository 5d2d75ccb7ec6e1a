"""How colluding clients learn who else was sampled this round, and share work among themselves.

The channel belongs to the attackers, not to the defender: it is a directory they all reach (one
host, or a volume shared between containers), never the Flower strategy, which learns no roles.
Each sampled colluder checks in under `round-<r>/`; the rendezvous closes `window_s` seconds
after the first check-in, and the first colluder to reach the deadline seals the decision file
(the members present and whether they number at least k). Later colluders read the sealed
decision, so every member acts on the same coalition; one arriving after the seal is left out
and trains benignly. Members then exchange tensors through the same directory (`from_leader`,
`gather`), and keep state for later rounds in the channel root (`stash`, `recall`). Every
colluder appends what it did to `ledger.jsonl`: the ground truth for evaluation, which the
defender's strategy never reads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from core.config import RunConfig
from core.config_base import param
from core.policy_params import PolicyParams, declare_params

T = TypeVar("T")
_POLL_S = 0.05


class ChannelParams(PolicyParams):
    """The colluders' channel: where they meet and how long they wait (every policy reads it:
    with `roles.min-colluders` > 1 any policy goes through the rendezvous)."""

    channel_dir: str = param(
        "",
        'the colluders\' rendezvous directory ("" -> <output-dir>/colluders/run-<id>)',
        sentinel="",
        resolved_in="attacks.collusion.channel_root (needs the Flower run id)",
    )
    rendezvous_s: float = param(
        10.0, "seconds colluders wait for each other after the first check-in", gt=0
    )
    channel_timeout: float = param(
        600.0, "seconds a colluder waits for a partner's shared model", gt=0
    )


declare_params(ChannelParams, common=True)


class ChannelError(RuntimeError):
    """The colluders' channel failed: a member's share never arrived within the timeout."""


@dataclass(frozen=True)
class Coalition:
    """The colluders present in one round, as every one of them sees it."""

    server_round: int
    me: int  # this colluder's partition id
    members: tuple[int, ...]  # partition ids of the colluders in the coalition, sorted
    attack: bool  # at least k of them were sampled: attack this round
    round_dir: Path | None = None  # None: a coalition of one with no channel
    timeout_s: float = 600.0
    _memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def alone(cls, server_round: int, me: int) -> Coalition:
        """A colluder acting on its own (k = 1 and a policy that needs no partners)."""
        return cls(server_round, me, (me,), attack=True)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def leader(self) -> int:
        return self.members[0]

    @property
    def is_leader(self) -> bool:
        return self.me == self.leader

    def from_leader(self, key: str, compute: Callable[[], T]) -> T:
        """The leader computes `compute()` and shares it; every other member receives it."""
        if self.is_leader:
            value = compute()
            self._publish(key, value)
            return value
        return self._receive(key, self.leader)

    def gather(self, key: str, value: T) -> list[T]:
        """Share `value` and receive every member's, in member order (this one's included)."""
        self._publish(key, value)
        return [value if m == self.me else self._receive(key, m) for m in self.members]

    def stash(self, key: str, value: Any) -> None:
        """Keep `value` for the coalitions of later rounds, whoever their members (one writer).

        It lives in the channel root, outside the round directories; a later `stash` replaces it.
        """
        _save_atomic(value, self._stash_path(key))

    def recall(self, key: str) -> Any | None:
        """What an earlier round stashed under `key`, or None when nothing was stashed."""
        path = self._stash_path(key)
        return torch.load(path, weights_only=False) if path.exists() else None

    def _stash_path(self, key: str) -> Path:
        if self.round_dir is None:
            raise ChannelError("a coalition of one without a channel has nowhere to stash")
        return self.round_dir.parent / f"stash-{_checked_key(key)}.pt"

    def _path(self, key: str, member: int) -> Path:
        assert self.round_dir is not None
        return self.round_dir / f"share-{_checked_key(key)}-{member}.pt"

    def _publish(self, key: str, value: Any) -> None:
        if self.round_dir is None:
            return
        _save_atomic(value, self._path(key, self.me))

    def _receive(self, key: str, member: int) -> Any:
        if self.round_dir is None:
            raise ChannelError("a coalition of one has no partner to receive from")
        path = self._path(key, member)
        deadline = time.monotonic() + self.timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise ChannelError(
                    f"round {self.server_round}: colluder {member}'s {key!r} did not arrive "
                    f"within {self.timeout_s:.0f} s"
                )
            time.sleep(_POLL_S)
        return torch.load(path, weights_only=False)


@dataclass(frozen=True)
class CollusionChannel:
    """A rendezvous directory shared by the colluders of one run."""

    root: Path
    min_colluders: int = 1  # k: attack only when at least k colluders are in the round
    window_s: float = 10.0  # how long after the first check-in others may still join
    timeout_s: float = 600.0  # how long to wait for a partner's share

    def join(self, server_round: int, me: int) -> Coalition:
        """Check in for `server_round` and return the sealed coalition of that round."""
        round_dir = self.root / f"round-{server_round}"
        round_dir.mkdir(parents=True, exist_ok=True)
        _create(round_dir / "opened", f"{time.time()!r}")  # only the first check-in wins
        _create(round_dir / f"member-{me}", "")
        opened = float((round_dir / "opened").read_text() or time.time())
        decision = round_dir / "decision.json"
        while not decision.exists() and time.time() < opened + self.window_s:
            time.sleep(_POLL_S)
        if not decision.exists():
            members = sorted(int(p.name.split("-")[1]) for p in round_dir.glob("member-*"))
            sealed = {"members": members, "attack": len(members) >= self.min_colluders}
            _create(decision, json.dumps(sealed))  # the first to seal wins; others read it
        sealed = _read_json(decision)
        members = tuple(sealed["members"])
        if me not in members:  # arrived after the seal: not part of this round's coalition
            return Coalition(server_round, me, (me,), attack=False)
        return Coalition(
            server_round, me, members, bool(sealed["attack"]), round_dir, self.timeout_s
        )

    def record(self, entry: dict[str, Any]) -> None:
        """Append one line of ground truth to `ledger.jsonl` (evaluation only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.root / "ledger.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one O_APPEND write: lines from many processes never interleave
        finally:
            os.close(fd)


def channel_root(cfg: RunConfig, run_id: int) -> Path:
    """The colluders' directory of Flower run `run_id`: `attack.channel-dir`, or one per run
    (the one place its "" sentinel is resolved: the run id exists only once the run does)."""
    channel_dir = ChannelParams.of(cfg).channel_dir
    if channel_dir:
        return Path(channel_dir).expanduser().resolve()
    return Path(cfg.output_dir).expanduser().resolve() / "colluders" / f"run-{run_id}"


def open_channel(cfg: RunConfig, run_id: int) -> CollusionChannel:
    """The run's channel with the run config's k, window and timeout."""
    params = ChannelParams.of(cfg)
    return CollusionChannel(
        channel_root(cfg, run_id),
        cfg.roles.min_colluders,
        params.rendezvous_s,
        params.channel_timeout,
    )


def read_ledger(root: Path, name: str = "ledger.jsonl") -> list[dict[str, Any]]:
    """The ground-truth lines the colluders of a run wrote, in the order written (`name`:
    ledger.jsonl in their channel, ground_truth.jsonl in a run directory)."""
    path = root / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checked_key(key: str) -> str:
    """`key` if it is safe in a file name (alphanumeric with - or _), else ValueError."""
    if not key.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"channel key must be alphanumeric with - or _, got {key!r}")
    return key


def _save_atomic(value: Any, target: Path) -> None:
    """torch.save to a private temporary name, then rename: readers never see a partial file."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}-{threading.get_ident()}")
    torch.save(value, tmp)
    tmp.replace(target)


def _create(path: Path, text: str) -> bool:
    """Create `path` holding `text` atomically unless it exists; True if this call created it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{time.monotonic_ns()}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # fails if path exists: exactly one creator
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
