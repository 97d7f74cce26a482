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

from pipeline.endpoint.auth import Credentials, CredentialSource
from pipeline.endpoint.breaker import OPEN_AFTER, OUTAGE, Breaker
from pipeline.endpoint.pacing import Cost, Pacer, Ticket, TokenLimits, oversized
from pipeline.endpoint.payloads import (
    BadResponse,
    PromptSpec,
    SchemaMismatch,
    chat_body,
    encode,
    error_message,
)
from pipeline.errors import RunError
from pipeline.outcomes import ErrorClass

# Longest wait we accept from a Retry-After header; a server asking for more is treated as
# "later", and the row fails as rate_limited after its attempts rather than stalling a task.
MAX_RETRY_AFTER_S = 300.0

# A request whose credentials are refused gets fresh ones and is sent again, this many times
# at most; then it is put off, and the driver decides (pipeline/runs/recovery.py).
AUTH_RENEWALS = 2
# How often a retry's backoff looks whether the breaker has opened meanwhile.
NAP_S = 0.5

# A structured answer that breaks the schema is asked again: models that do not enforce
# schemas break them now and then, not every time. A cut-off or refused answer is an answer
# (the call succeeds) and is never asked again here: the same request would end the same way.
RETRIABLE = {ErrorClass.RATE_LIMITED, ErrorClass.TIMEOUT, ErrorClass.SERVER_ERROR,
             ErrorClass.CONNECTION_ERROR, ErrorClass.BAD_RESPONSE, ErrorClass.SCHEMA_MISMATCH}


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
    # Put off, not failed: the cause is the run's (credentials, an outage), not the row's;
    # the row is asked again once that is mended.
    deferred: bool = False

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
    # Where the headers come from: the settings' snapshot (an executor's batch), or the
    # driver's Authenticator, asked before every attempt so a run outlives its tokens.
    source: CredentialSource | None = None
    breaker: Breaker = field(default_factory=Breaker)

    async def __aenter__(self) -> CaptionClient:
        s = self.settings
        self.limit = AdaptiveLimit(s.concurrency)
        self.gate = RateGate(s.rpm)
        self.pacer = Pacer(s.limits) if s.limits.given() else None
        self.breaker.open_after = max(OPEN_AFTER, s.concurrency)  # a window's worth
        self._source: CredentialSource = self.source or s.credentials
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_s, connect=min(10.0, s.timeout_s)),
            limits=httpx.Limits(
                max_connections=s.concurrency, max_keepalive_connections=s.concurrency
            ),
            headers={"Content-Type": "application/json"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def call(self, body: bytes, parse: Parser, cost: Cost | None = None) -> CallResult:
        """Send one request body, retrying until it succeeds or cannot; `parse` reads a 200
        body (e.g. `payloads.caption_parser(...)`) and raises BadResponse when it is unusable.
        `cost` is what the request takes from the token limits, when the run has any.

        A request is put off (`deferred`), not failed, when the cause is the run's and not
        the row's: credentials refused even after a refresh, or an outage (the Breaker)."""
        s = self.settings
        # Paced when the run has token limits and this request says what it takes from them.
        pacer = self.pacer if cost is not None else None
        if pacer is not None and cost is not None and (why := oversized(s.limits, cost)):
            return CallResult(None, ErrorClass.REJECTED, why, 0, None)
        attempt = _Attempt(ErrorClass.CONNECTION_ERROR, "No attempt was made.")
        number = throttled = renewed = 0
        failures = 0  # attempts that failed, but for refused credentials
        met_outage = False
        latency_ms = None
        first_outage_at = 0.0  # when this request first met an outage failure
        held = dict.fromkeys(pacer.windows, 0.0) if pacer is not None else {}

        def result(deferred: bool = False) -> CallResult:
            return CallResult(attempt.answer, attempt.error_class, attempt.message, number,
                              latency_ms, throttled, held, deferred)

        while True:
            await self.gate.wait()
            epoch = await self.limit.acquire()  # CancelledError once the run is stopping
            ticket: Ticket | None = None
            started = time.perf_counter()
            if self.breaker.open:  # the endpoint is down: nothing is sent until it is back
                await self.limit.release(epoch, False)
                attempt = _Attempt(attempt.error_class if number else ErrorClass.SERVER_ERROR,
                                   self.breaker.cause or "The endpoint is down.")
                return result(deferred=True)
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
                used = await self._credentials()
                number += 1
                sent_at = time.monotonic()
                attempt = await self._attempt(body, parse, used)
            finally:
                latency_ms = int((time.perf_counter() - started) * 1000)
                await self.limit.release(epoch, attempt.error_class == ErrorClass.RATE_LIMITED)
                if ticket is not None and pacer is not None and cost is not None:
                    pacer.settle(ticket, spent(attempt, cost))
            kind = attempt.error_class
            if kind in OUTAGE:
                at = self.breaker.failed(first=not met_outage, message=attempt.message)
                if not met_outage:
                    first_outage_at, met_outage = at, True
            elif kind not in (ErrorClass.RATE_LIMITED, ErrorClass.BAD_RESPONSE):
                self.breaker.alive(sent_at)  # an answer, or a 4xx: the endpoint is up
            if attempt.answer is not None:
                return result()
            if kind == ErrorClass.AUTH:
                # Refused credentials: fresh ones, and the request again at once. A snapshot
                # (an executor's) cannot be renewed: the row is put off for the driver.
                fresh = await asyncio.to_thread(self._source.refreshed, used)
                if fresh == used or renewed >= AUTH_RENEWALS:
                    return result(deferred=True)
                renewed += 1
                continue
            throttled += kind == ErrorClass.RATE_LIMITED
            failures += 1
            if kind not in RETRIABLE or failures == s.max_attempts:
                # One attempt is no retry: nothing to tell an outage by but the breaker's own.
                outage = (kind in OUTAGE and failures > 1
                          and self.breaker.exhausted(first_outage_at))
                return result(deferred=outage)
            if attempt.retry_after_s is not None:
                delay = min(attempt.retry_after_s, MAX_RETRY_AFTER_S)
            else:
                delay = backoff_seconds(failures - 1, s.backoff_base_s, s.backoff_cap_s, self.rng)
            await self._nap(delay)

    async def _credentials(self) -> Credentials:
        """The headers for the next attempt. The driver's Authenticator may block on a token
        request now and then: off the event loop, so other requests go on meanwhile."""
        if isinstance(self._source, Credentials):
            return self._source
        return await asyncio.to_thread(self._source.current)

    async def _nap(self, seconds: float) -> None:
        """Sleep before a retry, cut short if the breaker opens (the retry would be put off
        anyway, and its row can go back to the driver now)."""
        deadline = time.monotonic() + seconds
        while not self.breaker.open and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, NAP_S))

    async def _attempt(self, body: bytes, parse: Parser, credentials: Credentials) -> _Attempt:
        try:
            response = await self._http.post(self.settings.url, content=body,
                                              headers=credentials.header_dict())
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
            except SchemaMismatch as exc:  # the model answered, off the schema
                return _Attempt(ErrorClass.SCHEMA_MISMATCH, str(exc))
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
                                        ErrorClass.BAD_RESPONSE, ErrorClass.SCHEMA_MISMATCH)
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


# A probe is the smallest chat request there is: no image, one token out. It goes the way the
# run's requests go (the serving path, not the control plane, which may answer while serving
# is down), and costs a handful of tokens.
PROBE_PROMPT = "Reply with OK."


def probe(url: str, credentials: Credentials, model: str | None,
          timeout_s: float) -> tuple[ErrorClass | None, str]:
    """Ask the endpoint one tiny question: (None, what it said) when it answered (an answer,
    a 4xx or a 429: it is up), else (the class, what went wrong): a 5xx, a refused
    connection, a timeout, or credentials refused (AUTH)."""
    body = encode(chat_body(PromptSpec(PROBE_PROMPT, max_tokens=1), [], model))
    try:
        response = httpx.post(url, content=body, timeout=timeout_s,
                              headers={**credentials.header_dict(),
                                       "Content-Type": "application/json"})
    except httpx.TimeoutException:
        return ErrorClass.TIMEOUT, f"no answer within {timeout_s:g} s"
    except httpx.TransportError as exc:
        return ErrorClass.CONNECTION_ERROR, f"the connection failed ({type(exc).__name__})"
    said = f"HTTP {response.status_code}"
    detail = error_message(response.content) if response.status_code != 200 else None
    if detail:
        said += f": {detail[:200]}"
    kind = classify_status(response.status_code) if response.status_code != 200 else None
    if kind in (ErrorClass.AUTH, *OUTAGE):
        return kind, said
    return None, said
