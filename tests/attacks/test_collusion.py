"""The colluders' channel across real processes: one sealed coalition per round, shared tensors,
late arrivals left out, and a ground-truth ledger whose lines never interleave."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from attacks.collusion import ChannelError, Coalition, CollusionChannel, read_ledger

_FORK = mp.get_context("fork")


def _member(root: str, k: int, me: int, delay: float, out: mp.Queue) -> None:
    """One colluder process: join round 1 after `delay`, exchange values, record, report."""
    time.sleep(delay)
    channel = CollusionChannel(Path(root), min_colluders=k, window_s=1.5, timeout_s=20)
    c = channel.join(1, me)
    shared = c.gather("ids", torch.tensor([me])) if c.attack else []
    from_leader = c.from_leader("model", lambda: torch.full((3,), 7.0 + me)) if c.attack else None
    channel.record({"round": 1, "partition_id": me, "attacked": c.attack})
    leader_value = None if from_leader is None else from_leader.tolist()
    out.put((me, c.members, c.attack, [int(t) for t in shared], leader_value))


def _run(root: Path, k: int, delays: dict[int, float]) -> dict[int, tuple]:
    out = _FORK.Queue()
    procs = [
        _FORK.Process(target=_member, args=(str(root), k, me, d, out)) for me, d in delays.items()
    ]
    for p in procs:
        p.start()
    results = {r[0]: r[1:] for r in (out.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
    return results


@pytest.mark.slow
def test_colluders_in_separate_processes_agree_and_share(tmp_path: Path) -> None:
    results = _run(tmp_path, k=3, delays={4: 0.0, 1: 0.3, 9: 0.6})
    for me, (members, attack, shared, from_leader) in results.items():
        assert members == (1, 4, 9) and attack, me
        assert shared == [1, 4, 9]  # every member's value, in member order
        assert from_leader == [8.0, 8.0, 8.0]  # computed by leader 1 only
    ledger = read_ledger(tmp_path)
    assert sorted(e["partition_id"] for e in ledger) == [1, 4, 9]
    assert all(e["attacked"] for e in ledger)


@pytest.mark.slow
def test_fewer_than_k_colluders_do_not_attack(tmp_path: Path) -> None:
    results = _run(tmp_path, k=3, delays={2: 0.0, 5: 0.2})
    assert {me: r[:2] for me, r in results.items()} == {2: ((2, 5), False), 5: ((2, 5), False)}


@pytest.mark.slow
def test_a_colluder_arriving_after_the_seal_is_left_out(tmp_path: Path) -> None:
    results = _run(tmp_path, k=2, delays={0: 0.0, 3: 0.2, 6: 3.0})
    assert results[0][:2] == ((0, 3), True) and results[3][:2] == ((0, 3), True)
    assert results[6][:2] == ((6,), False)


def test_a_missing_share_times_out_with_a_clear_error(tmp_path: Path) -> None:
    c = Coalition(1, me=2, members=(1, 2), attack=True, round_dir=tmp_path, timeout_s=0.2)
    with pytest.raises(ChannelError, match="colluder 1's 'model' did not arrive"):
        c.from_leader("model", lambda: torch.zeros(1))
    with pytest.raises(ValueError, match="alphanumeric"):
        c.gather("../x", 1)


def test_a_coalition_of_one_needs_no_channel() -> None:
    c = Coalition.alone(4, me=3)
    assert c.attack and c.is_leader and c.size == 1
    assert c.gather("x", 5) == [5] and c.from_leader("y", lambda: 6) == 6
