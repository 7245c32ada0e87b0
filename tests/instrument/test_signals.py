"""HeldSignals: Ctrl-C and SIGTERM wait until gradlens has finished a run."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from gradlens.instrument.signals import ABANDON_MESSAGE, HeldSignals, exit_code_for


def _press(signum: int = signal.SIGINT) -> None:
    os.kill(os.getpid(), signum)  # handled before kill() returns to Python code


def test_ctrl_c_is_held_then_raised_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt), HeldSignals() as held:
        _press()
        done.append("flushed")
    assert done == ["flushed"] and held.received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_press_warns_third_abandons(capsys):
    reached = []
    with pytest.raises(KeyboardInterrupt), HeldSignals(redeliver=False) as held:
        _press()
        assert capsys.readouterr().err == ""
        _press()
        assert capsys.readouterr().err.strip() == ABANDON_MESSAGE
        _press()
        reached.append("never")
    assert held.abandoned and reached == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_press_that_stopped_the_script_counts(capsys):
    with HeldSignals(presses=1, redeliver=False) as held:
        _press()
    assert capsys.readouterr().err.strip() == ABANDON_MESSAGE
    assert held.first == signal.SIGINT and exit_code_for(held.first) == 130


def test_sigterm_is_redelivered_to_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with HeldSignals():
            _press(signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_code_for(signal.SIGTERM) == 143


def test_nested_blocks_and_other_threads_leave_the_holding_to_the_outer_one():
    with HeldSignals(redeliver=False) as outer:
        with HeldSignals() as inner:
            _press()
        assert not inner.active and outer.received == [signal.SIGINT]
    result = []
    thread = threading.Thread(target=lambda: result.append(HeldSignals().__enter__().active))
    thread.start()
    thread.join()
    assert result == [False]
