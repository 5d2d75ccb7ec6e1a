"""Run-config overrides: merged key by key whatever their number and order, written as one TOML
file that Flower reads back exactly, and checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from flwr.common.config import parse_config_args
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import main
from cli.run_config import merge_overrides, resolve, toml_document
from core.config import ConfigError
from tests.conftest import REPO


def test_overrides_sharing_a_table_are_all_kept_later_ones_winning() -> None:
    strings = [
        "num-rounds=2 train.clients-per-round=12 train.local-epochs=1",
        "train.min-nodes=12 roles.malicious-fraction=0.5",
        "roles.attack='backdoor' train.local-epochs=3",
    ]
    merged = merge_overrides(strings)
    assert merged == {
        "num-rounds": 2,
        "train.clients-per-round": 12,
        "train.local-epochs": 3,
        "train.min-nodes": 12,
        "roles.malicious-fraction": 0.5,
        "roles.attack": "backdoor",
    }
    # Flower itself keeps only the last string's `train` table (the bug this module avoids)
    assert "train.clients-per-round" not in parse_config_args(strings)
    cfg = resolve(REPO, merged)
    assert (cfg.train.clients_per_round, cfg.train.local_epochs, cfg.roles.attack) == (
        12,
        3,
        "backdoor",
    )


def _no_key_holds_another(flat: dict) -> bool:
    """Whether no key is a table prefix of another ("a" and "a.b" cannot both be set)."""
    return not any(b.startswith(a + ".") for a in flat for b in flat)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True),
        st.one_of(
            st.booleans(),
            st.integers(-(2**62), 2**62),
            st.floats(allow_nan=False),
            st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
        ),
        max_size=6,
    ).filter(_no_key_holds_another)
)
def test_the_toml_file_reads_back_as_the_same_overrides(tmp_path_factory, flat: dict) -> None:
    path = tmp_path_factory.mktemp("toml") / "run-config.toml"
    path.write_text(toml_document(flat), encoding="utf-8")
    assert parse_config_args([str(path)]) == flat


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--roles", "benign,attack:evil"], ["'attack:evil'", "attack:distillation", "fl-wbc"]),
        (["-c", "train.lr=-1"], ["'train.lr'", "-1", "greater than 0"]),
        (["-c", "roles.attack='evil'"], ["'roles.attack'", "'evil'", "distillation"]),
        (["-c", "agg.rule='medain'"], ["'agg.rule'", "'medain'", "'median'"]),
        (["-c", "train.lr=0.1 train.lr=0.2"], ["train.lr=0.1 train.lr=0.2"]),
        (["--supernodes", "0"], ["--supernodes", "0"]),
        (["--resume", "/nowhere/run"], ["--resume /nowhere/run", "launch.json"]),
        (["--heartbeat-interval", "5"], ["--heartbeat-interval = 5", "10 to 1800"]),
        (["--tls", "--intruders", "keyless"], ["--intruders needs --auth"]),
        (["--credentials", "/nowhere/creds"], ["--credentials needs --tls or --auth"]),
        (["--auth", "--intruders", "sneaky"], ["'sneaky'", "unregistered, keyless"]),
    ],
)
def test_launch_refuses_bad_input_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], fragments: list[str]
) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = main(["launch", str(REPO), "--output-dir", str(tmp_path), "--run-name", "bad", *argv])
    out = capsys.readouterr().out
    assert code == 2, out
    assert out.startswith("[launch] nothing started:") and out.count("\n") == 1, out
    for fragment in fragments:
        assert fragment in out
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert not any(tmp_path.iterdir()), "the launch created files"


def test_merge_names_the_bad_string() -> None:
    with pytest.raises(ConfigError, match="'a=\\[1'"):
        merge_overrides(["b=2", "a=[1"])


def test_launch_echoes_the_reason_a_server_failed() -> None:
    from cli.launch import shown

    assert shown("core.data.DataNotFoundError: mnist: missing train-images in /x/MNIST/raw\n")
    assert shown("\x1b[91mERROR \x1b[0m:     ServerApp raised an exception\n")
    assert shown("INFO :      [certfl] round   1/3 | median | ...\n")
    assert not shown('  File "/apps/certfl/server/app.py", line 46, in main\n')
    assert not shown("INFO :      Received: train message\n")
