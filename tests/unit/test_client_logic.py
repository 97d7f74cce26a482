"""The client's pure parts: Retry-After, status classes, backoff, AIMD, budget shares."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from pipeline.endpoint.asking import CallPlan
from pipeline.endpoint.auth import Secret, static
from pipeline.endpoint.client import (
    AdaptiveLimit,
    ClientSettings,
    backoff_seconds,
    classify_status,
    retry_after_seconds,
)
from pipeline.endpoint.pacing import Pacer, TokenLimits
from pipeline.endpoint.payloads import PromptSpec


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=7), usegmt=True),
                               now) == 7.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=7), usegmt=True),
                               now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, "rate_limited"), (408, "timeout"), (500, "server_error"), (502, "server_error"),
     (503, "server_error"), (504, "server_error"), (400, "rejected"), (404, "rejected"),
     (413, "rejected"), (401, "auth"), (403, "auth")],
)
def test_status_classes(status: int, kind: str) -> None:
    assert classify_status(status) == kind


def test_full_jitter_backoff_stays_within_its_exponential_envelope() -> None:
    rng = random.Random(1)
    for attempt in range(8):
        values = [backoff_seconds(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert 0 <= min(values) and max(values) <= min(30.0, 0.5 * 2**attempt)
        assert max(values) > 0.5 * min(30.0, 0.5 * 2**attempt)  # jitter spans the range


def test_aimd_halves_once_per_overload_and_recovers_gradually() -> None:
    async def scenario() -> list[float]:
        limit = AdaptiveLimit(8)
        epochs = [await limit.acquire() for _ in range(8)]
        assert limit.in_flight == 8
        for epoch in epochs:  # eight 429s from one overload: one halving
            await limit.release(epoch, throttled=True)
        seen = [limit.limit]
        for _ in range(4):  # one window of successes: +1
            epoch = await limit.acquire()
            await limit.release(epoch, throttled=False)
        seen.append(limit.limit)
        for _ in range(100):
            epoch = await limit.acquire()
            await limit.release(epoch, throttled=False)
        seen.append(limit.limit)
        return seen

    after_429, after_window, recovered = asyncio.run(scenario())
    assert after_429 == 4.0
    assert 4.9 < after_window < 5.1
    assert recovered == 8.0


def test_aimd_never_admits_more_than_the_limit() -> None:
    async def scenario() -> int:
        limit = AdaptiveLimit(3)

        async def one() -> None:
            epoch = await limit.acquire()
            await asyncio.sleep(0.001)
            await limit.release(epoch, throttled=False)

        await asyncio.gather(*(one() for _ in range(50)))
        return limit.peak

    assert asyncio.run(scenario()) == 3


@pytest.mark.parametrize(("budget", "tasks"), [(16, 2), (10, 4), (3, 3), (7, 7), (64, 8)])
def test_budget_shares_add_up_to_the_run_budget(budget: int, tasks: int) -> None:
    settings = ClientSettings("http://x", static("http://x", "t"), 1.0, 1, budget, 600,
                              TokenLimits(itpm=36_000, otpm=9_000, qph=500))
    plan = CallPlan(settings, PromptSpec("p", 1), None, tasks)
    shares = [plan.for_partition(p) for p in range(tasks)]
    assert sum(s.concurrency for s in shares) == budget
    assert max(s.concurrency for s in shares) - min(s.concurrency for s in shares) <= 1
    assert sum(s.rpm for s in shares) == pytest.approx(600)
    # Each task paces to its share of the token limits; together they keep to the run's.
    for name, limit in (("itpm", 36_000), ("otpm", 9_000), ("qph", 500)):
        windows = [Pacer(s.limits).windows[name] for s in shares]
        assert sum(w.limit for w in windows) == pytest.approx(limit)
        assert all(s.limits.given()[name] == limit for s in shares)  # the run's, to refuse


def test_secret_never_prints() -> None:
    secret = Secret("dapi-very-secret")
    creds = static("http://h", "dapi-very-secret")
    for text in (repr(secret), str(secret), repr(creds), f"{creds}", str([creds])):
        assert "dapi-very-secret" not in text
    assert creds.header_dict() == {"Authorization": "Bearer dapi-very-secret"}


def test_rate_gate_spaces_request_starts_to_the_rpm_cap() -> None:
    from pipeline.endpoint.client import RateGate

    async def scenario() -> list[float]:
        gate = RateGate(rpm=600)  # one start every 0.1 s
        starts = []
        for _ in range(5):
            await gate.wait()
            starts.append(time.monotonic())
        return starts

    starts = asyncio.run(scenario())
    # Starts keep to a schedule of one per 0.1 s: a late wake-up (a loaded machine) delays one
    # start, and never lets a later one come before its slot.
    since = [s - starts[0] for s in starts]
    assert all(t >= k * 0.1 - 0.005 for k, t in enumerate(since)), since
    assert asyncio.run(_no_gate()) < 0.05


async def _no_gate() -> float:
    from pipeline.endpoint.client import RateGate

    gate, started = RateGate(None), time.monotonic()
    for _ in range(100):
        await gate.wait()
    return time.monotonic() - started
