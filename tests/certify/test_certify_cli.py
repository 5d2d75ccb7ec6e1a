"""`certfl certify` on a checkpoint in the server's format, with real MNIST splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from cli import certify_cmd
from core.config import RunConfig
from core.models import InputSpec, build_model

MNIST = InputSpec(1, 28, 28, 10, (0.1307,), (0.3081,))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    certify_cmd.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["certify", *argv])


def test_certify_command_prints_and_writes_every_radius(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_model("mlp", MNIST, seed=0)
    config = RunConfig.from_flat({"model.name": "mlp", "data.dir": str(data_dir)}).to_flat()
    ckpt = tmp_path / "round-3.pt"
    torch.save({"model": "mlp", "state_dict": model.state_dict(), "config": config}, ckpt)
    out = tmp_path / "cert.json"
    args = _parse([str(ckpt), "--eps", "0.0,0.01", "--n", "20", "--json", str(out)])
    assert certify_cmd.run(args) == 0
    printed = capsys.readouterr()
    assert "| 0.01 |" in printed.out and "20/20" in printed.err
    result = json.loads(out.read_text())
    assert result["n"] == 20 and [r["eps"] for r in result["results"]] == [0.0, 0.01]
    at_zero = result["results"][0]
    assert at_zero["certified_accuracy"] == pytest.approx(at_zero["clean_accuracy"])
    args = _parse([str(ckpt), "--eps", "0.01", "--n", "5", "--method", "interval", "--sound-fp"])
    assert certify_cmd.run(args) == 0
    assert "interval" in capsys.readouterr().out


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(SystemExit, match="missing"):
        certify_cmd.run(_parse([str(bad)]))
