"""`signals_interrupt`: a signal inside the block interrupts it, once, even when code inside the
block swallowed the KeyboardInterrupt; the previous handlers come back afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from cli.processes import signals_interrupt


def _spin() -> None:
    for _ in range(10**6):  # a Python handler runs at a bytecode boundary
        pass


def test_a_signal_raises_keyboard_interrupt_and_the_old_handler_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        _spin()
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_interrupt_swallowed_inside_the_block_is_raised_when_it_ends() -> None:
    reached_end = False
    with pytest.raises(KeyboardInterrupt), signals_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            _spin()
        except KeyboardInterrupt:
            pass  # as when it fired inside a C++ call that then failed with its own error
        os.kill(os.getpid(), signal.SIGINT)  # a second signal is ignored
        _spin()
        reached_end = True
    assert reached_end
