"""`CertificationGate` as a value around any strategy: accept, skip, reference update, the round-0
measurement, Flower's FedAvg and FedMedian inside, and resuming from `state_dict`. A stub
measurer reads the candidate's certified loss off its single weight, so these run in
milliseconds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian

from core.config import RunConfig
from core.gate_rule import Bound
from core.wire import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES
from strategies.gate import CertificationGate, GateReport
from strategies.gate_measure import MeasureResult

HONEST = {"clean_acc": 0.95, "pgd_acc": 0.85, "cert_acc@0.1": 0.6}


def _arrays(w: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.array([w], dtype=np.float32))})


class StubMeasurer:
    """Metrics of a model whose one weight is its certified loss; remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, tuple[Bound, ...]]] = []

    def __call__(
        self, arrays: ArrayRecord, server_round: int, bounds: Sequence[Bound] = ()
    ) -> MeasureResult:
        w = float(arrays["w"].numpy()[0])
        self.calls.append((server_round, w, tuple(bounds)))
        metrics = dict(HONEST, **{"cert_loss@0.1": w})
        return MeasureResult(metrics, dict.fromkeys(metrics, 100), {"wall": 0.0})


class ScriptedStrategy:
    """The smallest RoundStrategy: returns the next scripted candidate (not a Flower class)."""

    def __init__(self, candidates: Iterable[float]) -> None:
        self.candidates = iter(candidates)

    def configure_train(self, server_round, arrays, config, grid):
        return []

    def aggregate_train(self, server_round, replies):
        return _arrays(next(self.candidates)), None

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self) -> None:
        pass


def _gate(inner, **flat: object) -> tuple[CertificationGate, StubMeasurer]:
    cfg = RunConfig.from_flat({"gate.l-crt": "0.1", **flat}).gate
    measurer = StubMeasurer()
    return CertificationGate(inner, measurer, cfg), measurer


class FakeGrid:
    """Three connected nodes, for Flower's own strategies' sampling."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def _round(gate: CertificationGate, server_round: int, global_w: float, replies=()) -> bool:
    """One round's gate work: configure (measures round 0 once), aggregate; accepted?"""
    gate.configure_train(server_round, _arrays(global_w), ConfigRecord(), FakeGrid())
    candidate, _ = gate.aggregate_train(server_round, replies)
    return candidate is not None


def test_gate_measures_round0_accepts_honest_skips_masked_and_keeps_the_reference() -> None:
    gate, measurer = _gate(ScriptedStrategy([2.5, 300.0, 2.0]))
    assert _round(gate, 1, global_w=5.0)  # honest: below the untrained model's 5.0
    assert measurer.calls[0][:2] == (0, 5.0)  # the initial model, measured before round 1
    first = gate.last_report
    assert isinstance(first, GateReport) and first.accepted and first.round == 1
    assert first.initial is not None and first.initial["cert_loss@0.1"] == 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.accepted = False  # type: ignore[misc]
    history = gate.state.accepted

    assert not _round(gate, 2, global_w=2.5)  # gradient masking: 120x the reference
    skipped = gate.last_report
    assert not skipped.accepted and "cert_loss@0.1 window" in skipped.failed
    assert gate.state.accepted == history  # a skip leaves the reference alone
    assert first.accepted  # the earlier report is a value: untouched

    assert skipped.initial is None  # measured once, reported in round 1 only
    assert _round(gate, 3, global_w=2.5)
    assert [m.round for m in gate.state.accepted] == [1, 3]
    assert measurer.calls[-1][2], "the rule's bounds reach the measurer (early verdict)"
    record = gate.last_report.to_record()
    assert json.loads(json.dumps(record))["accepted"] is True


def test_shadow_rule_is_recorded_not_enforced_and_disables_early_verdicts() -> None:
    gate, measurer = _gate(
        ScriptedStrategy([4.0, 2.0]), **{"gate.shadow-rules": "cfat", "gate.warmup-rounds": 0}
    )
    assert _round(gate, 1, global_w=5.0)
    assert _round(gate, 2, global_w=4.0)  # calibrated accepts; cfat: 2.0 vs its reference 4.0
    shadow = gate.last_report.shadow
    assert [(s.rule, s.accepted) for s in shadow] == [("cfat", True)]
    assert measurer.calls[-1][2] == ()
    gate2, _ = _gate(
        ScriptedStrategy([4.0, 9.0, 9.5]), **{"gate.shadow-rules": "cfat", "gate.warmup-rounds": 0}
    )
    _round(gate2, 1, 5.0)
    _round(gate2, 2, 4.0)
    report = gate2.last_report
    assert report.accepted  # 9.0 is within the calibrated tolerance of the window median ...
    assert report.shadow[0].failed == ("cert_loss@0.1 growth",)  # ... not of CFAT's 10%
    _round(gate2, 3, 9.0)
    # the shadow rule judges against the models actually accepted: 9.5 vs 9.0 passes CFAT
    assert gate2.last_report.shadow[0].accepted


def _reply(node: int, w: float, n: int = 10) -> Message:
    sent = Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type="train")
    content = RecordDict({ARRAYS: _arrays(w), METRICS: MetricRecord({NUM_EXAMPLES: n})})
    return Message(content, reply_to=sent)


@pytest.mark.parametrize("flower_strategy", [FedAvg, FedMedian])
def test_gate_wraps_flowers_own_strategies(flower_strategy) -> None:
    gate, _ = _gate(flower_strategy(fraction_evaluate=0.0))
    honest = [_reply(1, 2.0), _reply(2, 2.5), _reply(3, 3.0)]
    assert _round(gate, 1, global_w=5.0, replies=honest)
    assert np.isclose(gate.state.accepted[-1].value("cert_loss@0.1"), 2.5)
    masked = [_reply(1, 300.0), _reply(2, 300.0), _reply(3, 300.0)]
    assert not _round(gate, 2, global_w=2.5, replies=masked)
    assert gate.last_report.round == 2 and not gate.last_report.accepted


def test_resuming_from_state_dict_decides_as_an_uninterrupted_run() -> None:
    losses = [4.0, 3.0, 2.6, 2.4, 9.0, 2.2, 2.5, 300.0, 2.3, 2.1, 2.6, 4.4]
    flat = {"gate.shadow-rules": "cfat"}
    whole, _ = _gate(ScriptedStrategy(losses), **flat)
    decisions = [_round(whole, r, 5.0) for r in range(1, len(losses) + 1)]
    assert not all(decisions) and any(decisions)

    first, _ = _gate(ScriptedStrategy(losses[:6]), **flat)
    before = [_round(first, r, 5.0) for r in range(1, 7)]
    saved = json.dumps(first.state_dict())
    resumed, measurer = _gate(ScriptedStrategy(losses[6:]), **flat)
    resumed.load_state_dict(json.loads(saved))
    after = [_round(resumed, r, 5.0) for r in range(7, len(losses) + 1)]
    assert before + after == decisions
    assert all(r != 0 for r, _, _ in measurer.calls)  # the initial model came with the state
    assert resumed.state == whole.state
    with pytest.raises(ValueError, match="version"):
        resumed.load_state_dict({"version": 99, "state": {}})
    other, _ = _gate(ScriptedStrategy([]), **{"gate.l-crt": "0.2"})
    with pytest.raises(ValueError, match="cert_loss@0.2"):
        other.load_state_dict(json.loads(saved))
