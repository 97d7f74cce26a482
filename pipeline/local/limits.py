"""The local endpoint's rate limits: a cap on requests per minute, and a pay-per-token
endpoint's input tokens per minute, output tokens per minute and queries per hour.

Each limit counts over its own sliding window; a request past one is refused with a 429 and a
Retry-After saying when it would fit, as a real endpoint does. Kept apart from the server so
the HTTP side only asks "admitted, or what is the refusal?".
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from pipeline.endpoint.pacing import NAMES, UNITS, window_s
from pipeline.local.protocol import Reply, error_reply

RPM_WINDOW_S = 60.0


class Tally:
    """Amounts counted at given times, summed over the last `seconds` (a sliding window)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.total = 0
        self._log: deque[tuple[float, int]] = deque()

    def add(self, amount: int, now: float) -> None:
        self._log.append((now, amount))
        self.total += amount

    def wait(self, need: int, limit: int, now: float) -> float:
        """0.0 when `need` more fits under `limit` now, else the seconds until it does."""
        while self._log and self._log[0][0] + self.seconds <= now:
            self.total -= self._log.popleft()[1]
        excess = self.total + need - limit
        if excess <= 0:
            return 0.0
        for at, amount in self._log:
            excess -= amount
            if excess <= 0:
                return at + self.seconds - now
        return self.seconds


class Limits:
    """The limits of one endpoint (None: not enforced), and what each counted so far."""

    def __init__(self, max_rpm: int | None, max_itpm: int | None, max_otpm: int | None,
                 max_qph: int | None) -> None:
        self.max_rpm = max_rpm
        self.max = {"itpm": max_itpm, "otpm": max_otpm, "qph": max_qph}
        self._lock = threading.Lock()
        self._admitted_at: deque[float] = deque()  # start times inside the rpm window
        self._tallies = {name: Tally(window_s(name)) for name in NAMES}

    def over_rpm(self) -> Reply | None:
        """The 429 when the per-minute cap admits no request now; None when it does, and then
        the request is counted in the window."""
        cap = self.max_rpm
        if cap is None:
            return None
        with self._lock:
            now = time.monotonic()
            while self._admitted_at and now - self._admitted_at[0] >= RPM_WINDOW_S:
                self._admitted_at.popleft()
            if len(self._admitted_at) < cap:
                self._admitted_at.append(now)
                return None
            wait_s = RPM_WINDOW_S - (now - self._admitted_at[0])
        return error_reply(
            429,
            "REQUEST_LIMIT_EXCEEDED",
            f"The endpoint's limit of {cap} requests per minute is exceeded.",
            headers=(("Retry-After", str(max(1, math.ceil(wait_s)))),),
        )

    def admit_tokens(self, tokens: int) -> tuple[Reply, str | None] | None:
        """None when the token and query limits admit a request of `tokens` input tokens (it
        is then counted), else the refusal and the limit that refused: a 400 (no limit) for a
        request larger than a whole minute, or a 429."""
        itpm = self.max["itpm"]
        if itpm is not None and tokens > itpm:
            return error_reply(
                400, "BAD_REQUEST",
                f"The request has {tokens:,} input tokens; the endpoint's limit is "
                f"{itpm:,} input tokens per minute."), None
        needs = {"itpm": tokens, "otpm": 1, "qph": 1}
        with self._lock:
            now = time.monotonic()
            waits = {name: self._tallies[name].wait(need, limit, now)
                     for name, need in needs.items()
                     if (limit := self.max[name]) is not None}
            refused = max(waits, key=waits.__getitem__, default=None)
            if refused is None or waits[refused] == 0.0:
                self._tallies["itpm"].add(tokens, now)
                self._tallies["qph"].add(1, now)
                return None
        return error_reply(
            429, "REQUEST_LIMIT_EXCEEDED",
            f"The endpoint's limit of {self.max[refused]:,} {UNITS[refused]} is exceeded.",
            headers=(("Retry-After", str(max(1, math.ceil(waits[refused])))),)), refused

    def count_output(self, tokens: int) -> None:
        with self._lock:
            self._tallies["otpm"].add(tokens, time.monotonic())
