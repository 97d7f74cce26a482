"""Pacing under a pay-per-token endpoint's limits: input tokens per minute (ITPM), output
tokens per minute (OTPM) and queries per hour (QPH). No HTTP here: the client asks the
`Pacer` before each attempt and tells it what the attempt really cost.

Databricks counts each limit over a window of a minute (an hour for QPH) and answers 429 past
any of them, with a Retry-After that can be close to a minute (docs/limits-and-cost.md,
"Pay-per-token limits"). The pacer keeps a sliding window of its own, which never admits more
in any minute than the limit, whichever way the endpoint's window turns over. Reacting to those
429s (AIMD) only starts after the storm has begun, so the pacer admits a request only when its
cost fits every window: its estimated input tokens, its `max_tokens` of output (settled with
the real usage when the answer comes, so a short answer frees what it did not use), and one
query.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass, field

# The limits, in the order they are reported: the name is the flag's (`--max-itpm`).
NAMES = ("itpm", "otpm", "qph")
UNITS = {"itpm": "input tokens per minute", "otpm": "output tokens per minute",
         "qph": "queries per hour"}
# Row fields: seconds a request was held back by each limit, shared by its images like its
# `request_share`, so that their sum is how long the run waited for that limit.
HELD = tuple(f"waited_{name}_s" for name in NAMES)
# The window of each limit, in minutes.
WINDOW_MINUTES = {"itpm": 1, "otpm": 1, "qph": 60}


def minute_s() -> float:
    """Seconds in the limits' minute: 60. Tests and demos against the local endpoint set
    VISION_BATCH_MINUTE_S to shorten every window alike (the endpoint reads the same value),
    so that pacing can be watched without waiting whole minutes."""
    return float(os.environ.get("VISION_BATCH_MINUTE_S") or 60.0)


def window_s(name: str) -> float:
    return WINDOW_MINUTES[name] * minute_s()


@dataclass(frozen=True)
class TokenLimits:
    """The run's limits (None: not limited) and the share of them one asking task paces to."""

    itpm: int | None = None
    otpm: int | None = None
    qph: int | None = None
    share: float = 1.0  # 1 / the Spark tasks asking at once

    def given(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in NAMES if getattr(self, name)}


@dataclass(frozen=True)
class Cost:
    """What one attempt takes from each limit before it is sent."""

    input_tokens: int
    output_tokens: int  # reserved: the request's max_tokens

    def of(self, name: str) -> int:
        return {"itpm": self.input_tokens, "otpm": self.output_tokens, "qph": 1}[name]


def held_back(waited: dict[str, float]) -> str:
    """'held back 12.0 s by input tokens per minute', for the limits that held anything."""
    parts = [f"{seconds:.1f} s by {UNITS[name]}" for name, seconds in waited.items()
             if seconds >= 0.05]
    return "held back " + ", ".join(parts) if parts else ""


def oversized(limits: TokenLimits, cost: Cost) -> str | None:
    """Why a request can never be sent under the run's limits, or None. It could not fit
    even an empty window, so waiting would stall it forever."""
    for name, limit in limits.given().items():
        need = cost.of(name)
        if need > limit:
            return (f"This request needs an estimated {need:,} of the run's "
                    f"{limit:,} {UNITS[name]} (--max-{name}), more than a whole window; "
                    "it was not sent.")
    return None


@dataclass
class _Entry:
    amount: float


class Window:
    """What was admitted within the last `seconds`, against `limit`.

    An attempt in flight is counted until it is settled, and then as from the moment its
    answer arrived: the endpoint counted it no later than that, so our window never ends
    before the endpoint's does.
    """

    def __init__(self, limit: float, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.used = 0.0
        # (when it was settled, entry), in settling order, so in time order; an entry in
        # flight is not here: it never expires.
        self._settled: deque[tuple[float, _Entry]] = deque()

    def add(self, amount: float) -> _Entry:
        self.used += amount
        return _Entry(amount)

    def settle(self, entry: _Entry, amount: float, now: float) -> None:
        self.used += amount - entry.amount
        entry.amount = amount
        self._settled.append((now, entry))

    def wait(self, need: float, now: float) -> float | None:
        """Seconds until `need` fits: 0 now, None until an attempt in flight settles. A need
        larger than the limit (this task's share of a limit it fits) waits for an empty
        window and then goes alone."""
        while self._settled and self._settled[0][0] + self.seconds <= now:
            self.used -= self._settled.popleft()[1].amount
        need = min(need, self.limit)
        if self.used + need <= self.limit + 1e-9:
            return 0.0
        freed, excess = 0.0, self.used + need - self.limit
        for at, entry in self._settled:
            freed += entry.amount
            if freed >= excess - 1e-9:
                return at + self.seconds - now
        return None


@dataclass
class Ticket:
    """One admitted attempt: its place in each window, and how long it was held, by limit."""

    entries: dict[str, _Entry]
    held_s: dict[str, float] = field(default_factory=dict)


class Pacer:
    """Admits attempts one at a time, in arrival order, when their cost fits every window.

    Only the attempt at the head of the line waits on the windows; the others wait behind it.
    The head's waits, summed, are how long this client was held back by each limit (wall
    time), which the run reports.
    """

    def __init__(self, limits: TokenLimits) -> None:
        self.windows = {name: Window(limit * limits.share, window_s(name))
                        for name, limit in limits.given().items()}
        self._line = asyncio.Lock()  # fair: waiters acquire in arrival order
        self._settled = asyncio.Event()

    async def admit(self, cost: Cost) -> Ticket:
        held = dict.fromkeys(self.windows, 0.0)
        async with self._line:
            while True:
                now = time.monotonic()
                waits = {name: w.wait(cost.of(name), now) for name, w in self.windows.items()}
                # The limit that holds the request longest is the one it waits for.
                name = max(waits, key=lambda n: float("inf") if (w := waits[n]) is None else w,
                           default=None)
                if name is None or waits[name] == 0.0:
                    break
                self._settled.clear()
                try:  # a settlement may free room sooner than the oldest entry expires
                    await asyncio.wait_for(self._settled.wait(), timeout=waits[name])
                except TimeoutError:
                    pass
                held[name] += time.monotonic() - now
            entries = {name: w.add(cost.of(name)) for name, w in self.windows.items()}
        return Ticket(entries, held)

    def settle(self, ticket: Ticket, real: Cost | None) -> None:
        """What the attempt really cost, once it is over; None when the endpoint refused it
        unanswered (a 429), so it counts against nothing."""
        now = time.monotonic()
        for name, entry in ticket.entries.items():
            self.windows[name].settle(entry, real.of(name) if real else 0, now)
        self._settled.set()
