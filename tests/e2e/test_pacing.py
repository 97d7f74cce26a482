"""Token and query limits against the local endpoint enforcing the same ones, over real HTTP.

The limits' minute is shortened (VISION_BATCH_MINUTE_S, read by the client and the endpoint
alike) so that windows turn over within a test.
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.endpoint.asking import cost
from pipeline.endpoint.client import CallResult, CaptionClient, ClientSettings
from pipeline.endpoint.pacing import Cost, TokenLimits
from pipeline.endpoint.payloads import PromptSpec, caption_parser, chat_body, encode
from tests import files

MINUTE_S = 2.0
# About 100 prompt tokens and 2 image tokens per request (the generic family, 32x24 pixels).
SPEC = PromptSpec("Describe this image. " * 19, max_tokens=400)


@pytest.fixture(autouse=True)
def short_minute(monkeypatch) -> None:
    monkeypatch.setenv("VISION_BATCH_MINUTE_S", str(MINUTE_S))


def ask(endpoint, creds, n: int, limits: TokenLimits, spec: PromptSpec = SPEC,
        **settings) -> list[CallResult]:
    images = [files.jpeg(32 + i, 24) for i in range(n)]
    options = {"timeout_s": 10.0, "max_attempts": 8, "concurrency": 4, "limits": limits,
               **settings}

    async def go() -> list[CallResult]:
        config = ClientSettings(f"{endpoint.url}/serving-endpoints/ep/invocations", creds,
                                **options)
        async with CaptionClient(config) as client:
            parse = caption_parser("caption", False)
            return await asyncio.gather(*(
                client.call(encode(chat_body(spec, [("image/jpeg", image)])), parse,
                            cost(spec, 2))
                for image in images))

    return asyncio.run(go())


def test_paced_to_the_input_token_limit_no_request_is_turned_away(serve) -> None:
    endpoint, creds = serve(max_itpm=1000)  # about 9 requests a minute
    storm = ask(endpoint, creds, 24, TokenLimits())  # AIMD alone
    assert all(r.ok for r in storm)
    assert endpoint.stats()["over_itpm"] >= 5  # what pacing must prevent

    endpoint, creds = serve(max_itpm=1000)
    paced = ask(endpoint, creds, 24, TokenLimits(itpm=1000))
    stats = endpoint.stats()
    assert all(r.ok and r.attempts == 1 for r in paced)
    assert stats["over_itpm"] == 0 and stats["requests"] == 24
    # Two more windows were needed after the first, and the head of the line waited them.
    assert sum(r.held_s["itpm"] for r in paced) >= MINUTE_S


def test_a_short_answer_gives_back_the_output_it_reserved(serve) -> None:
    # Each request reserves 400 output tokens, so 2 fit a minute of 1000; the answers use
    # about 60, and settling with the real usage lets the rest go in the same minute.
    endpoint, creds = serve(max_otpm=1000)
    results = ask(endpoint, creds, 10, TokenLimits(otpm=1000))
    used = [r.answer.usage.completion_tokens for r in results]
    assert all(r.ok for r in results) and max(used) < 100
    assert endpoint.stats()["over_otpm"] == 0
    # Reserving 400 for good would have held the line for four more minutes (10 / 2 - 1).
    assert sum(r.held_s["otpm"] for r in results) < MINUTE_S


def test_a_request_larger_than_the_whole_minute_is_rejected_unsent(serve) -> None:
    endpoint, creds = serve(max_itpm=1000)
    [result] = ask(endpoint, creds, 1, TokenLimits(itpm=50))
    assert (result.ok, result.error_class, result.attempts) == (False, "rejected", 0)
    assert "--max-itpm" in result.error_message and "102" in result.error_message
    assert endpoint.stats()["requests"] == 0
    # The endpoint refuses one too, in one line naming its limit.
    [refused] = ask(endpoint, creds, 1, TokenLimits(), PromptSpec("x" * 4000, max_tokens=10))
    assert refused.error_class == "rejected" and "1,000 input tokens per minute" in \
        refused.error_message


def test_queries_per_hour_are_paced_over_the_hour(serve, monkeypatch) -> None:
    monkeypatch.setenv("VISION_BATCH_MINUTE_S", "0.05")  # an hour of 3 s
    endpoint, creds = serve(max_qph=5)
    storm = ask(endpoint, creds, 6, TokenLimits(), concurrency=6)
    assert endpoint.stats()["over_qph"] >= 1  # the sixth, unpaced, is turned away

    endpoint, creds = serve(max_qph=5)
    results = ask(endpoint, creds, 6, TokenLimits(qph=5), concurrency=6)
    stats = endpoint.stats()
    assert all(r.ok for r in results + storm) and stats["over_qph"] == 0
    # Five go at once; the sixth waits until the first answer is an hour old.
    assert sorted(r.held_s["qph"] > 0 for r in results) == [False] * 5 + [True]
    assert max(r.held_s["qph"] for r in results) >= 2.5


def test_a_request_waiting_for_room_is_never_sent_once_the_run_stops(serve) -> None:
    endpoint, creds = serve(max_itpm=1000)
    parse = caption_parser("caption", False)
    bodies = [encode(chat_body(SPEC, [("image/jpeg", files.jpeg(32 + i, 24))]))
              for i in range(2)]

    async def go() -> CallResult:
        config = ClientSettings(f"{endpoint.url}/serving-endpoints/ep/invocations", creds,
                                timeout_s=10.0, max_attempts=3, concurrency=4,
                                limits=TokenLimits(itpm=1000))
        async with CaptionClient(config) as client:
            first = await client.call(bodies[0], parse, cost(SPEC, 2))  # ~102 tokens used
            waiting = asyncio.create_task(client.call(bodies[1], parse, Cost(950, 10)))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # held until the first is a minute old
            await client.limit.close()  # Ctrl-C: nothing new starts
            with pytest.raises(asyncio.CancelledError):
                await waiting
            return first

    assert asyncio.run(go()).ok
    assert endpoint.stats()["requests"] == 1
