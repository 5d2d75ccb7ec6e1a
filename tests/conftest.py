"""Shared test setup: where the real datasets are, a private cache for extracted files, and the
helpers several test modules use (a tiny input spec and model, Flower train replies)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from attacks.registry import load_policies
from core.models import InputSpec, build_model
from core.params import model_to_record
from core.wire import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES

REPO = Path(__file__).resolve().parents[1]
load_policies()  # as the apps do before they parse: the policies' names and `attack.*` keys

# 4x4 single-channel inputs, 3 classes: small enough for strategy tests to aggregate in ms
TINY_SPEC = InputSpec(1, 4, 4, 3, (0.5,), (0.25,))


def tiny_template(seed: int = 0) -> ArrayRecord:
    """The arrays of a seeded MLP on TINY_SPEC, as a strategy's initial global model."""
    return model_to_record(build_model("mlp", TINY_SPEC, seed=seed))


def train_reply(node: int, arrays: dict[str, np.ndarray] | None, n: object = 10) -> Message:
    """A train reply from `node` carrying `arrays` (None: an error reply) and `num-examples` = n
    (None: no `num-examples` metric at all)."""
    sent = Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type="train")
    if arrays is None:
        return Message(Error(code=0, reason="client crashed"), reply_to=sent)
    metrics = MetricRecord({NUM_EXAMPLES: n}) if n is not None else MetricRecord({"loss": 1.0})
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(RecordDict({ARRAYS: record, METRICS: metrics}), reply_to=sent)


def _data_dir() -> Path:
    return Path(os.environ.get("CERTFL_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def certfl_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point CERTFL_DATA at the shared data and CERTFL_CACHE at a writable cache for the session."""
    os.environ["CERTFL_DATA"] = str(_data_dir())
    os.environ.setdefault("CERTFL_CACHE", str(tmp_path_factory.mktemp("certfl-cache")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (../shared/data unless CERTFL_DATA says otherwise)."""
    path = _data_dir()
    if not (path / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {path}; set CERTFL_DATA to the shared data directory")
    return path


def flwr_simulation(tmp_path: Path, run_config: str, supernodes: int, timeout: float = 600):
    """A real `flwr run` simulation of this app in a private Flower home under `tmp_path`."""
    from cli.simulation import run_simulation

    return run_simulation(REPO, run_config, supernodes, tmp_path / "flwr-home", timeout)


def simulated_run(
    tmp_path: Path, data_dir: Path, name: str, overrides: str, supernodes: int
) -> tuple[Path, str]:
    """A finished simulation run `name` (data from `data_dir`, output under `tmp_path`): its run
    directory and Flower's output; fails with the output's tail if the run did not complete."""
    run_config = f"data.dir='{data_dir}' output-dir='{tmp_path / 'runs'}' run-name='{name}' "
    output = flwr_simulation(tmp_path / name, run_config + overrides, supernodes).stdout
    run_dir = tmp_path / "runs" / name
    assert (run_dir / "done").is_file(), output[-4000:]
    return run_dir, output
