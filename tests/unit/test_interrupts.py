"""The stop switch and the parts of the client and callers a stop relies on."""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import Future

import pytest

from pipeline.endpoint.client import AdaptiveLimit
from pipeline.interrupts import Interrupted, Stop
from pipeline.runs.callers import gathered


def test_the_exit_code_is_128_plus_the_signal() -> None:
    assert Interrupted(signal.SIGINT).exit_code == 130
    assert Interrupted(signal.SIGTERM).exit_code == 143
    assert isinstance(Interrupted(signal.SIGINT), KeyboardInterrupt)


def test_without_a_halt_the_signal_raises_and_with_one_it_runs_the_halt_aside() -> None:
    stop = Stop()
    with pytest.raises(Interrupted):
        stop._handle(signal.SIGTERM, None)
    assert stop.requested and stop.signum == signal.SIGTERM

    halted = threading.Event()
    stop = Stop()
    stop.halting_with(halted.set)
    stop._handle(signal.SIGINT, None)  # no raise: the loop ends itself
    stop.wait_halted()
    assert halted.is_set() and stop.requested


def test_a_closed_limit_sends_nothing_more_and_lets_the_waiting_go() -> None:
    async def scenario() -> list[str]:
        limit = AdaptiveLimit(1)
        held = await limit.acquire()
        waiting = asyncio.ensure_future(limit.acquire())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # no slot: it waits
        await limit.close()
        outcomes = []
        try:
            await waiting
        except asyncio.CancelledError:
            outcomes.append("cancelled")
        await limit.release(held, False)
        try:
            await limit.acquire()
        except asyncio.CancelledError:
            outcomes.append("cancelled")
        return outcomes

    assert asyncio.run(scenario()) == ["cancelled", "cancelled"]


def test_gathered_keeps_the_answers_in_and_drops_the_cancelled() -> None:
    answered, cancelled, late = Future(), Future(), Future()
    every = gathered([answered, cancelled, late])
    answered.set_result([{"path": "a"}])
    cancelled.cancel()
    assert not every.done()  # waits for every request
    late.set_result([{"path": "c"}])
    assert every.result() == [{"path": "a"}, {"path": "c"}]


def test_outside_the_main_thread_the_host_keeps_its_signals() -> None:
    stop = Stop()
    before = signal.getsignal(signal.SIGTERM)
    errors: list[Exception] = []

    def install() -> None:
        try:
            stop.install()
        except Exception as exc:  # signal.signal outside the main thread: ValueError
            errors.append(exc)

    worker = threading.Thread(target=install)
    worker.start()
    worker.join()
    assert errors == [] and not stop.installed
    assert signal.getsignal(signal.SIGTERM) is before
