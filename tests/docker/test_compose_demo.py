"""The compose demo for real (opt-in: CERTFL_DOCKER_TESTS=1; needs dockerd, docker-compose and a
`python:3.11-slim` image, pulled or made as ../shared/docker-recipe.md says).

`docker/demo.sh --tls` builds the image, starts a SuperLink with TLS and SuperNode
authentication, the ServerApp's SuperExec and four SuperNodes (two colluding with
`distillation`) with their ClientApp SuperExecs, registers the keys, runs two rounds with the
gate on and the colluders attacking from round 1, and tears everything down. The run directory
stays on the host; no container or volume of the demo is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from attacks.collusion import read_ledger
from server.run_store import read_rounds
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CERTFL_DOCKER_TESTS") != "1",
        reason="opt-in: set CERTFL_DOCKER_TESTS=1 (needs dockerd and docker-compose)",
    ),
]
SMALL = (
    "data.max-client-samples=200 train.adv-steps=2 train.local-epochs=1 eval.n-test=200 "
    "eval.adv-steps=3 roles.attack-start-round=1 attack.distill-epochs=2 gate.pgd-steps=3 "
    "data.n-val=500 data.n-cert=100"
)


def _project_leftovers() -> str:
    """Containers and volumes of the demo's compose project that still exist."""
    label = "label=com.docker.compose.project=certfl-demo"
    found = ""
    for what in (["ps", "-a"], ["volume", "ls"]):
        proc = subprocess.run(
            ["docker", *what, "-q", "--filter", label], capture_output=True, text=True, timeout=60
        )
        found += proc.stdout
    return found.strip()


def test_compose_demo_with_tls_and_auth_runs_and_cleans_up(tmp_path: Path, data_dir: Path) -> None:
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool) is None:
            pytest.fail(f"CERTFL_DOCKER_TESTS=1 but {tool} is not installed")
    runs = tmp_path / "runs"
    env = {**os.environ, "CERTFL_RUNS": str(runs), "CERTFL_DATA": str(data_dir)}
    proc = subprocess.run(
        ["bash", str(REPO / "docker" / "demo.sh"), "--tls", "--rounds", "2", "--", SMALL],
        capture_output=True, text=True, timeout=3000, env=env,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert _project_leftovers() == "", "the demo left containers or volumes behind"
    [run_dir] = [p for p in runs.iterdir() if p.is_dir() and p.name.startswith("compose-")]
    assert (run_dir / "done").is_file()
    rounds = read_rounds(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["accepted"] == 4 for r in rounds[1:])
    assert "[certfl] round   2/2" in output and "[certfl] gate round" in output
    truth = read_ledger(run_dir, "ground_truth.jsonl")
    assert sorted({e["partition_id"] for e in truth}) == [0, 1]  # the two colluders, and only they
