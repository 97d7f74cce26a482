"""The async chat-completions client: bounded, adaptive concurrency and retries that end.

One `CaptionClient` lives in each Spark task. It keeps one pooled httpx.AsyncClient, admits
at most the task's share of the run's concurrency budget, halves that share when the
endpoint answers 429 and grows it back one request per window of successes (AIMD), and
retries what can still succeed with full-jitter exponential backoff or the server's
Retry-After. Under pay-per-token limits it first waits for room in them
(pipeline/endpoint/pacing.py), so those 429s are avoided rather than met.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from pipeline.endpoint.auth import Credentials
from pipeline.endpoint.pacing import Cost, Pacer, Ticket, TokenLimits, oversized
from pipeline.endpoint.payloads import BadResponse, error_message
from pipeline.errors import RunError
from pipeline.outcomes import ErrorClass

# Longest wait we accept from a Retry-After header; a server asking for more is treated as
# "later", and the row fails as rate_limited after its attempts rather than stalling a task.
MAX_RETRY_AFTER_S = 300.0

RETRIABLE = {ErrorClass.RATE_LIMITED, ErrorClass.TIMEOUT, ErrorClass.SERVER_ERROR,
             ErrorClass.CONNECTION_ERROR, ErrorClass.BAD_RESPONSE}


@dataclass(frozen=True)
class ClientSettings:
    url: str
    credentials: Credentials
    timeout_s: float
    max_attempts: int
    concurrency: int  # this task's share of the run's budget
    rpm: float | None = None  # this task's share of the requests-per-minute cap
    limits: TokenLimits = TokenLimits()  # the run's token and query limits, and this share
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


# Turns a 200 body into an answer, or raises BadResponse (a retriable failure).
Parser = Callable[[bytes], Any]


@dataclass
class CallResult:
    answer: Any  # what the parser made of the body; None when the call failed
    error_class: ErrorClass | None
    error_message: str | None
    attempts: int
    latency_ms: int | None
    throttled: int = 0  # how many 429s this row met
    held_s: dict[str, float] = field(default_factory=dict)  # waits for room, by limit

    @property
    def ok(self) -> bool:
        return self.answer is not None


@dataclass
class _Attempt:
    error_class: ErrorClass | None
    message: str | None
    answer: Any = None
    retry_after_s: float | None = None


class AdaptiveLimit:
    """AIMD concurrency limit: halve on throttling, +1 per window of successes.

    Only one halving per "epoch": requests already in flight when the limit dropped carry the
    old epoch, so a burst of 429s from one overload halves the limit once, not to 1.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.epoch = 0
        self.peak = 0
        self.closed = False
        self._changed = asyncio.Condition()

    async def close(self) -> None:
        """No attempt starts from now on (a stop: Ctrl-C); those waiting end cancelled."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def acquire(self) -> int:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.in_flight < int(self.limit) or self.closed)
            if self.closed:  # nothing new starts: the request ends unsent (cancelled)
                raise asyncio.CancelledError
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return self.epoch

    async def release(self, epoch: int, throttled: bool) -> None:
        async with self._changed:
            self.in_flight -= 1
            if throttled and epoch == self.epoch:
                self.limit = max(1.0, self.limit / 2)
                self.epoch += 1
            elif not throttled:
                self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
            # Wake only as many waiters as there are free slots: with thousands of queued
            # rows, notify_all would wake every one of them on every answer.
            self._changed.notify(max(0, int(self.limit) - self.in_flight))


class RateGate:
    """Spaces request starts evenly to stay under a requests-per-minute cap."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        await asyncio.sleep(start - now)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def classify_status(status: int) -> ErrorClass:
    if status == 429:
        return ErrorClass.RATE_LIMITED
    if status == 408:
        return ErrorClass.TIMEOUT
    if status in (401, 403):
        return ErrorClass.AUTH
    if status >= 500:
        return ErrorClass.SERVER_ERROR
    return ErrorClass.REJECTED


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


@dataclass
class CaptionClient:
    settings: ClientSettings
    rng: random.Random = field(default_factory=random.Random)

    async def __aenter__(self) -> CaptionClient:
        s = self.settings
        self.limit = AdaptiveLimit(s.concurrency)
        self.gate = RateGate(s.rpm)
        self.pacer = Pacer(s.limits) if s.limits.given() else None
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_s, connect=min(10.0, s.timeout_s)),
            limits=httpx.Limits(
                max_connections=s.concurrency, max_keepalive_connections=s.concurrency
            ),
            headers={**s.credentials.header_dict(), "Content-Type": "application/json"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def call(self, body: bytes, parse: Parser, cost: Cost | None = None) -> CallResult:
        """Send one request body, retrying until it succeeds or cannot; `parse` reads a 200
        body (e.g. `payloads.caption_parser(...)`) and raises BadResponse when it is unusable.
        `cost` is what the request takes from the token limits, when the run has any."""
        s = self.settings
        # Paced when the run has token limits and this request says what it takes from them.
        pacer = self.pacer if cost is not None else None
        if pacer is not None and cost is not None and (why := oversized(s.limits, cost)):
            return CallResult(None, ErrorClass.REJECTED, why, 0, None)
        attempt = _Attempt(ErrorClass.CONNECTION_ERROR, "No attempt was made.")
        throttled = 0
        latency_ms = None
        held = dict.fromkeys(pacer.windows, 0.0) if pacer is not None else {}
        for number in range(1, s.max_attempts + 1):
            await self.gate.wait()
            epoch = await self.limit.acquire()  # CancelledError once the run is stopping
            ticket: Ticket | None = None
            started = time.perf_counter()
            try:
                if pacer is not None and cost is not None:
                    ticket = await pacer.admit(cost)
                    for name, seconds in ticket.held_s.items():
                        held[name] += seconds
                    if self.limit.closed:  # the run stopped while this waited: it ends unsent
                        pacer.settle(ticket, None)
                        ticket = None
                        raise asyncio.CancelledError
                    started = time.perf_counter()
                attempt = await self._attempt(body, parse)
            finally:
                latency_ms = int((time.perf_counter() - started) * 1000)
                await self.limit.release(epoch, attempt.error_class == ErrorClass.RATE_LIMITED)
                if ticket is not None and pacer is not None and cost is not None:
                    pacer.settle(ticket, spent(attempt, cost))
            if attempt.answer is not None:
                return CallResult(attempt.answer, None, None, number, latency_ms, throttled,
                                  held)
            throttled += attempt.error_class == ErrorClass.RATE_LIMITED
            if attempt.error_class not in RETRIABLE or number == s.max_attempts:
                return CallResult(None, attempt.error_class, attempt.message, number,
                                  latency_ms, throttled, held)
            if attempt.retry_after_s is not None:
                delay = min(attempt.retry_after_s, MAX_RETRY_AFTER_S)
            else:
                delay = backoff_seconds(number - 1, s.backoff_base_s, s.backoff_cap_s, self.rng)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns on its last attempt")

    async def _attempt(self, body: bytes, parse: Parser) -> _Attempt:
        try:
            response = await self._http.post(self.settings.url, content=body)
        except httpx.TimeoutException:
            return _Attempt(
                ErrorClass.TIMEOUT, f"No answer within {self.settings.timeout_s:g} s."
            )
        except httpx.TransportError as exc:
            return _Attempt(ErrorClass.CONNECTION_ERROR,
                            f"The connection failed ({type(exc).__name__}).")
        if response.status_code == 200:
            try:
                return _Attempt(None, None, parse(response.content))
            except BadResponse as exc:
                return _Attempt(ErrorClass.BAD_RESPONSE, str(exc))
        error_class = classify_status(response.status_code)
        detail = error_message(response.content) or response.reason_phrase or "no detail"
        return _Attempt(
            error_class,
            f"The endpoint answered HTTP {response.status_code}: {detail[:300]}",
            retry_after_s=retry_after_seconds(response.headers.get("Retry-After"))
            if response.status_code in (429, 503)
            else None,
        )


def spent(attempt: _Attempt, cost: Cost) -> Cost | None:
    """What an attempt took from the endpoint's limits, as far as we can know: the usage of
    an answer, nothing for a 429 (refused before any work), and for other failures the input
    (it may have been read) and, when an answer was or may still be generated, the output."""
    if attempt.error_class == ErrorClass.RATE_LIMITED:
        return None
    usage = getattr(attempt.answer, "usage", None)
    if usage is not None:
        return Cost(cost.input_tokens if usage.prompt_tokens is None else usage.prompt_tokens,
                    cost.output_tokens if usage.completion_tokens is None
                    else usage.completion_tokens)
    generated = attempt.error_class in (ErrorClass.TIMEOUT, ErrorClass.CONNECTION_ERROR,
                                        ErrorClass.BAD_RESPONSE)
    return Cost(cost.input_tokens, cost.output_tokens if generated else 0)


class EndpointError(RunError):
    """The endpoint cannot be used at all (unreachable, token refused, unknown name)."""


def preflight(credentials: Credentials, endpoint: str, timeout_s: float = 15.0) -> None:
    """Check host, token and endpoint once before any work, with the serving-endpoints API.

    A wrong host or token would otherwise surface as one failed row per file.
    """
    url = f"{credentials.host}/api/2.0/serving-endpoints/{endpoint}"
    try:
        response = httpx.get(url, headers=credentials.header_dict(), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EndpointError(
            f"cannot reach {credentials.host} ({type(exc).__name__})"
        ) from None
    if response.status_code in (401, 403):
        raise EndpointError(
            f"{credentials.host} refused the credentials (HTTP {response.status_code})"
        )
    if response.status_code == 404:
        raise EndpointError(f"serving endpoint {endpoint!r} not found on {credentials.host}")
    if response.status_code >= 400:
        detail = error_message(response.content) or response.reason_phrase
        raise EndpointError(
            f"{credentials.host} answered HTTP {response.status_code} for endpoint "
            f"{endpoint!r}: {detail[:200]}"
        )
