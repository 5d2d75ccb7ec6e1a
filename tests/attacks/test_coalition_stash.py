"""Coalition.stash / recall: state a coalition keeps for the colluders of later rounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from attack_jobs import run_colluders

from attacks.collusion import ChannelError, Coalition


@pytest.mark.slow
def test_stash_reaches_later_coalitions_with_other_members(tmp_path: Path) -> None:
    def first(me: int, c: Coalition) -> object:
        assert c.recall("model") is None  # nothing stashed yet
        c.gather("checked", me)  # both have looked before the leader stashes
        if c.is_leader:
            c.stash("model", {"w": torch.arange(4.0), "rounds": 1})
        return c.members

    assert run_colluders(tmp_path, [3, 7], first, server_round=1) == {3: (3, 7), 7: (3, 7)}
    later = run_colluders(tmp_path, [5, 9], lambda me, c: c.recall("model"), server_round=4)
    for value in later.values():
        assert value["rounds"] == 1 and torch.equal(value["w"], torch.arange(4.0))
    assert not list((tmp_path / "round-1").glob("stash-*"))  # outside the round directories

    def overwrite(me: int, c: Coalition) -> object:
        c.stash("model", {"rounds": 2})
        return c.recall("model")

    assert run_colluders(tmp_path, [9], overwrite, server_round=5)[9] == {"rounds": 2}


def test_stash_needs_a_channel_and_a_safe_key(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="nowhere to stash"):
        Coalition.alone(1, 0).stash("x", 1)
    with pytest.raises(ValueError, match="alphanumeric"):
        run_colluders(tmp_path, [1], lambda me, c: c.stash("../escape", 1))
