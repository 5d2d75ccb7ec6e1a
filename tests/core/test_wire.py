"""The wire names are the ones Flower's own strategies use by default, so that a client of ours
also answers FedAvg, FedMedian and the rest (the gate wraps any of them)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg, FedMedian

from core.wire import ARRAYS, CONFIG, NUM_EXAMPLES


def test_wire_names_are_flowers_defaults() -> None:
    for strategy in (FedAvg(), FedMedian()):
        assert strategy.arrayrecord_key == ARRAYS == "arrays"
        assert strategy.configrecord_key == CONFIG == "config"
        assert strategy.weighted_by_key == NUM_EXAMPLES == "num-examples"
