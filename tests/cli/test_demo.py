"""`scripts/demo.sh` with a user's override of the same table as the demo's own: both reach the
run, and no process the demo started is left running (checked by process tree)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli.test_launch import TINY
from tests.conftest import REPO
from tests.process_tree import watched


@pytest.mark.slow
def test_demo_keeps_every_override_and_leaves_no_process(tmp_path: Path, data_dir: Path) -> None:
    user = (
        f"num-rounds=1 train.clients-per-round=3 {TINY} roles.attack='logit-scaling' "
        f"roles.attack-start-round=1 roles.min-colluders=1 output-dir='{tmp_path / 'runs'}' "
        "run-name='demo'"
    )
    env = {**os.environ, "CERTFL_SKIP_INSTALL": "1", "CERTFL_DATA": str(data_dir)}
    demo = ["bash", str(REPO / "scripts" / "demo.sh"), "--run-config", user]
    with watched(demo, env=env, cwd=tmp_path) as (proc, _):
        output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-4000:]
    run_dir = tmp_path / "runs" / "demo"
    assert (run_dir / "done").is_file(), output[-4000:]
    config = json.loads((run_dir / "config.json").read_text())
    # the demo's roles.malicious-fraction and the user's roles.* both took effect
    assert config["roles.malicious-fraction"] == 0.5
    assert (config["roles.attack"], config["roles.min-colluders"]) == ("logit-scaling", 1)
    assert config["data.dir"] == str(data_dir) and config["train.clients-per-round"] == 3
    assert "[certfl] round   1/1" in output
