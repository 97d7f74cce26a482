"""The async client against a real local endpoint: retries, classes, Retry-After, budgets."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.endpoint.auth import static
from pipeline.endpoint.client import (
    CallResult,
    CaptionClient,
    ClientSettings,
    EndpointError,
    preflight,
)
from pipeline.endpoint.payloads import PromptSpec, caption_parser, chat_body, encode
from pipeline.local.faults import Faults
from tests import files

SPEC = PromptSpec("Describe.", max_tokens=50)


def bodies(n: int) -> list[bytes]:
    """n distinct one-image request bodies."""
    return [
        encode(chat_body(SPEC, [("image/jpeg", files.jpeg(32 + i, 24))])) for i in range(n)
    ]


def call_all(url: str, creds, payloads: list[bytes], **settings) -> list[CallResult]:
    options = {"timeout_s": 5.0, "max_attempts": 3, "concurrency": 4,
               "backoff_base_s": 0.05, **settings}

    async def go() -> list[CallResult]:
        config = ClientSettings(f"{url}/serving-endpoints/ep/invocations", creds, **options)
        async with CaptionClient(config) as client:
            parse = caption_parser("caption", False)
            return await asyncio.gather(*(client.call(b, parse) for b in payloads))

    return asyncio.run(go())


def test_healthy_endpoint_answers_every_row_in_order(serve) -> None:
    endpoint, creds = serve()
    results = call_all(endpoint.url, creds, bodies(6))
    assert all(r.ok and r.attempts == 1 for r in results)
    # Each answer describes its own image: widths 32..37 appear in order.
    assert [f"{32 + i}x24" in r.answer.caption for i, r in enumerate(results)] == [True] * 6
    assert all(r.answer.usage.total_tokens > 0 for r in results)


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        ("rate_429", "rate_limited"),
        ("rate_500", "server_error"),
        ("rate_502", "server_error"),
        ("rate_503", "server_error"),
        ("rate_504", "server_error"),
        ("rate_html", "bad_response"),
        ("rate_drop", "connection_error"),
        ("rate_hang", "timeout"),
    ],
)
def test_each_fault_is_retried_then_reported_with_its_class(serve, fault, error_class) -> None:
    endpoint, creds = serve(Faults(**{fault: 1.0}))
    results = call_all(endpoint.url, creds, bodies(2), max_attempts=2, timeout_s=0.5)
    assert [(r.ok, r.error_class, r.attempts) for r in results] == [(False, error_class, 2)] * 2
    assert all(r.error_message and "Bearer" not in r.error_message for r in results)


def test_one_fault_in_five_still_ends_with_every_row_answered(serve) -> None:
    faults = Faults(rate_500=0.05, rate_503=0.05, rate_429=0.05, rate_drop=0.05, seed=7)
    endpoint, creds = serve(faults)
    results = call_all(endpoint.url, creds, bodies(40), max_attempts=5)
    assert all(r.ok for r in results)
    assert sum(r.attempts for r in results) == endpoint.stats()["requests"]
    assert sum(r.attempts > 1 for r in results) >= 3


def test_rejections_and_auth_are_not_retried(serve) -> None:
    endpoint, creds = serve()
    tiff = encode(chat_body(SPEC, [("image/tiff", files.tiff_scan())]))
    [rejected] = call_all(endpoint.url, creds, [tiff])
    assert (rejected.error_class, rejected.attempts) == ("rejected", 1)
    assert "HTTP 400" in rejected.error_message
    [refused] = call_all(endpoint.url, static(endpoint.url, "wrong"), bodies(1))
    assert (refused.error_class, refused.attempts) == ("auth", 1)


def test_retry_after_is_honoured(serve) -> None:
    endpoint, creds = serve(Faults(rate_429=1.0, retry_after="1"))
    started = time.perf_counter()
    [result] = call_all(endpoint.url, creds, bodies(1), max_attempts=2)
    waited = time.perf_counter() - started
    assert result.error_class == "rate_limited" and result.throttled == 2
    assert 1.0 <= waited < 3.0


def test_the_endpoint_never_sees_more_than_the_budget(serve) -> None:
    endpoint, creds = serve(latency_ms=60, max_concurrency=4)
    results = call_all(endpoint.url, creds, bodies(24), concurrency=4)
    stats = endpoint.stats()
    assert all(r.ok for r in results)
    assert stats["max_in_flight"] == 4
    assert stats["by_status"].get("429", 0) == 0


def test_over_budget_client_backs_off_and_still_finishes(serve) -> None:
    endpoint, creds = serve(latency_ms=50, max_concurrency=2)
    results = call_all(endpoint.url, creds, bodies(24), concurrency=8, max_attempts=8)
    assert all(r.ok for r in results)
    refused = endpoint.stats()["by_status"].get("429", 0)
    # AIMD halves 8 -> 4 -> 2 after a few refusals instead of hammering for the whole run.
    assert 0 < refused < 24


def test_preflight_says_what_is_wrong_in_one_line(serve) -> None:
    endpoint, creds = serve(endpoint_name="ep")
    preflight(creds, "ep")
    with pytest.raises(EndpointError, match="refused the credentials"):
        preflight(static(endpoint.url, "wrong"), "ep")
    with pytest.raises(EndpointError, match="'other' not found"):
        preflight(creds, "other")
    with pytest.raises(EndpointError, match="cannot reach"):
        preflight(static("http://127.0.0.1:9", "t"), "ep", timeout_s=2)
