"""The pacing windows and the limits' arithmetic, with the clock passed in (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.endpoint.asking import cost
from pipeline.endpoint.pacing import Cost, Pacer, TokenLimits, Window, held_back, oversized
from pipeline.endpoint.payloads import PromptSpec


def test_a_window_admits_up_to_its_limit_and_frees_room_as_answers_age() -> None:
    window = Window(limit=100, seconds=60)
    a = window.add(60)
    assert window.wait(40, now=0) == 0.0
    b = window.add(40)
    # Both in flight: nothing frees room until one settles.
    assert window.wait(1, now=1) is None
    window.settle(a, 60, now=10)
    window.settle(b, 40, now=20)
    # Full until the first answer is 60 s old, then its 60 tokens are free again.
    assert window.wait(30, now=30) == pytest.approx(40)
    assert window.wait(30, now=70) == 0.0
    assert window.wait(70, now=70) == pytest.approx(10)  # needs the second one gone too


def test_settling_with_the_real_usage_frees_the_unused_reservation() -> None:
    window = Window(limit=1000, seconds=60)
    entries = [window.add(400) for _ in range(2)]
    assert window.wait(400, now=0) is None  # 800 reserved: a third does not fit
    window.settle(entries[0], 30, now=1)  # the answer used 30 of its 400
    assert window.wait(400, now=1) == 0.0
    assert window.used == 430


def test_a_request_larger_than_a_tasks_share_waits_for_an_empty_window_then_goes() -> None:
    window = Window(limit=50, seconds=60)  # one task's half of a 100-token limit
    window.settle(window.add(10), 10, now=0)
    assert window.wait(80, now=5) == pytest.approx(55)
    assert window.wait(80, now=60) == 0.0


def test_a_request_over_the_whole_limit_is_named_and_never_waited_for() -> None:
    limits = TokenLimits(itpm=1000, otpm=500, qph=10)
    assert oversized(limits, Cost(1000, 500)) is None
    message = oversized(limits, Cost(1001, 10))
    assert "1,001" in message and "--max-itpm" in message and "input tokens per minute" in message
    assert "--max-otpm" in oversized(limits, Cost(10, 501))
    assert oversized(TokenLimits(), Cost(10**9, 10**9)) is None


def test_the_cost_of_a_request_is_its_prompt_and_image_tokens_and_its_max_tokens() -> None:
    spec = PromptSpec("x" * 41, max_tokens=300)
    assert cost(spec, image_tokens=1600) == Cost(11 + 1600, 300)


def test_held_back_names_only_the_limits_that_held() -> None:
    assert held_back({"itpm": 12.04, "otpm": 0.0, "qph": 0.01}) == \
        "held back 12.0 s by input tokens per minute"
    assert held_back({"itpm": 0.0}) == ""


def test_the_pacer_holds_the_head_of_the_line_until_an_answer_frees_room() -> None:
    async def go() -> None:
        pacer = Pacer(TokenLimits(otpm=100))
        first = await pacer.admit(Cost(10, 100))  # reserves the whole minute's output
        second = asyncio.create_task(pacer.admit(Cost(10, 60)))
        await asyncio.sleep(0.05)
        assert not second.done()
        pacer.settle(first, Cost(10, 30))  # it used 30 of its 100: 70 free, room for 60
        ticket = await asyncio.wait_for(second, 1)
        assert ticket.held_s["otpm"] >= 0.04
        third = asyncio.create_task(pacer.admit(Cost(10, 60)))
        await asyncio.sleep(0.05)
        assert not third.done()  # 30 + 60 used
        pacer.settle(ticket, None)  # the endpoint refused it (429): it counts for nothing
        await asyncio.wait_for(third, 1)
        assert pacer.windows["otpm"].used == 90

    asyncio.run(go())
