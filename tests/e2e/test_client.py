"""The async client against a real local endpoint: retries, classes, Retry-After, budgets."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from pipeline.endpoint.auth import static
from pipeline.endpoint.breaker import OPEN_AFTER, OUTAGE
from pipeline.endpoint.client import (
    CallResult,
    CaptionClient,
    ClientSettings,
    EndpointError,
    preflight,
)
from pipeline.endpoint.payloads import PromptSpec, caption_parser, chat_body, encode
from pipeline.local.faults import Faults, pick_fault
from pipeline.local.outage import Outage
from tests import files

SPEC = PromptSpec("Describe.", max_tokens=50)


def bodies(n: int) -> list[bytes]:
    """n distinct one-image request bodies."""
    return [
        encode(chat_body(SPEC, [("image/jpeg", files.jpeg(32 + i, 24))])) for i in range(n)
    ]


def call_all(url: str, creds, payloads: list[bytes], source=None,
             **settings) -> list[CallResult]:
    options = {"timeout_s": 5.0, "max_attempts": 3, "concurrency": 4,
               "backoff_base_s": 0.05, **settings}

    async def go() -> list[CallResult]:
        config = ClientSettings(f"{url}/serving-endpoints/ep/invocations", creds, **options)
        async with CaptionClient(config, source=source) as client:
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
    assert all(r.error_message and "Bearer" not in r.error_message for r in results)
    assert [(r.ok, r.error_class) for r in results] == [(False, error_class)] * 2
    if error_class in OUTAGE:
        # Nothing was answered meanwhile: a 5xx, a dropped connection or a timeout is then
        # the endpoint's outage. The rows are put off, not failed, and the first to use up
        # its attempts stops the other's retries.
        assert all(r.deferred for r in results)
        assert sorted(r.attempts for r in results)[-1] == 2
    else:
        assert [(r.deferred, r.attempts) for r in results] == [(False, 2)] * 2


def test_an_outage_puts_every_row_off_and_stops_the_sending(serve) -> None:
    endpoint, creds = serve(Faults(rate_503=1.0))
    results = call_all(endpoint.url, creds, bodies(40), max_attempts=5, concurrency=4)
    assert all(r.deferred and r.error_class == "server_error" for r in results)
    assert all("HTTP 503" in (r.error_message or "") for r in results)
    # Without the breaker: 40 rows x 5 attempts = 200 requests. With it, sending stops once
    # OPEN_AFTER requests in a row have met a 503 (those in flight and their retries aside).
    assert endpoint.stats()["requests"] < 4 * OPEN_AFTER


def test_answers_before_an_outage_do_not_make_failures_of_the_rows_it_meets(serve) -> None:
    """The endpoint goes down at its third request: the rows it meets are put off, though
    other rows were answered after they began (the long-run test saw 4 rows of an asking
    task fail so: answers from before the outage said nothing of the endpoint after)."""
    endpoint, creds = serve(outage=Outage(after_requests=3, seconds=60), latency_ms=50)
    # Three rows meet it: fewer than the breaker's OPEN_AFTER, so each decides alone.
    results = call_all(endpoint.url, creds, bodies(5), max_attempts=3, concurrency=2)
    assert [r.ok for r in results[:2]] == [True, True]
    assert all(r.deferred and r.error_class == "server_error" for r in results[2:])


def test_answers_to_requests_sent_before_an_outage_do_not_hide_it(serve) -> None:
    """The endpoint goes down at its second request, after accepting the first, which it
    answers 100 ms later while the other rows meet 503s. That answer says nothing of the
    endpoint now: the other rows are put off, not failed."""
    endpoint, creds = serve(outage=Outage(after_requests=2, seconds=60), latency_ms=100)
    results = call_all(endpoint.url, creds, bodies(3), max_attempts=4, concurrency=2)
    assert sum(r.ok for r in results) == 1  # the first to arrive, whichever it was
    assert all(r.deferred and r.error_class == "server_error" for r in results if not r.ok)


def test_one_rows_own_server_errors_fail_that_row_alone(serve) -> None:
    """A body the endpoint always refuses with 500 while it answers the others: a failure of
    that row, not an outage (found among bodies whose faults, a function of the seed and
    the body, say so)."""
    faults = Faults(rate_500=0.5, seed=3)

    def faults_of(body: bytes) -> list[str | None]:
        key = hashlib.sha256(body).hexdigest()
        return [pick_fault(faults, key, n) for n in range(3)]

    candidates = bodies(80)
    bad = next(b for b in candidates if faults_of(b) == ["500"] * 3)
    good = [b for b in candidates if faults_of(b)[0] is None][:8]
    endpoint, creds = serve(faults)
    results = call_all(endpoint.url, creds, [bad, *good], max_attempts=3, concurrency=2)
    assert (results[0].error_class, results[0].attempts, results[0].deferred) == (
        "server_error", 3, False)
    assert all(r.ok for r in results[1:])


class Renewing:
    """A credential source whose first headers are refused and whose renewal is accepted
    (what the SDK's Authenticator does when an OAuth token has expired)."""

    def __init__(self, host: str, good) -> None:
        self.host, self.good = host, good
        self.renewals = 0

    def current(self):
        return self.good if self.renewals else static(self.host, "expired")

    def refreshed(self, stale):
        self.renewals += stale != self.good
        return self.good


def test_refused_credentials_are_renewed_on_the_driver_and_put_off_on_an_executor(
        serve) -> None:
    endpoint, creds = serve()
    # An executor's snapshot cannot be renewed: the row is put off, for the driver to mend.
    [put_off] = call_all(endpoint.url, static(endpoint.url, "expired"), bodies(1))
    assert (put_off.deferred, put_off.error_class, put_off.attempts) == (True, "auth", 1)
    # On the driver, the source renews them and the request goes again at once.
    source = Renewing(endpoint.url, creds)
    results = call_all(endpoint.url, creds, bodies(3), source=source, concurrency=1)
    assert all(r.ok for r in results)
    assert [r.attempts for r in results] == [2, 1, 1] and source.renewals == 1


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
    assert (refused.error_class, refused.attempts, refused.deferred) == ("auth", 1, True)


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
