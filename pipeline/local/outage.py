"""An endpoint outage: for a while, every chat request is refused the way a serving endpoint
refuses them while it is down, so a client's retries, backoff and resumption can be tested
against a real gap in service rather than scattered faults.

A window opens when the N-th chat request arrives (`Outage`, planned in the options), or on
demand (`LocalEndpoint.start_outage`, POST /local/outage). While it is open a chat request gets
a 503 TEMPORARILY_UNAVAILABLE (kind "503") or a connection closed with no answer (kind "drop"),
and no model work is done. Other routes (endpoint info, stats, OAuth) keep answering.

Clock and counters only, nothing heavy imported (the command line imports this module to build
its parser): the server (pipeline.local.server) turns a refusal into bytes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OUTAGE_KINDS = ("503", "drop")


def check(seconds: Any, kind: Any, names: tuple[str, str]) -> None:
    """ValueError, naming `names` (the flags, or the fields of POST /local/outage), unless
    `seconds` is a positive finite number and `kind` one of OUTAGE_KINDS."""
    seconds_name, kind_name = names
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            0 < seconds < math.inf):
        raise ValueError(f"{seconds_name} must be a number of seconds above zero, not {seconds!r}")
    if kind not in OUTAGE_KINDS:
        raise ValueError(f"{kind_name} must be one of {', '.join(OUTAGE_KINDS)}, not {kind!r}")


@dataclass(frozen=True)
class Outage:
    """A planned outage: it opens when the `after_requests`-th chat request arrives (that
    request is already refused) and lasts `seconds`."""

    after_requests: int
    seconds: float
    kind: str = "503"

    def __post_init__(self) -> None:
        n = self.after_requests
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"--outage-after must be a whole number, at least 1, not {n!r}")
        check(self.seconds, self.kind, ("--outage-seconds", "--outage-kind"))


class OutageWindow:
    """Whether the endpoint is down now, and when it last was. Requests are counted for the
    planned outage from the start, whatever reset_stats() does: the plan is behaviour."""

    def __init__(self, planned: Outage | None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._planned = planned
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._chat_requests = 0
        self._kind = "503"
        self._until: float | None = None  # when the open (or last) window closes, on clock
        self._started_at: float | None = None  # wall clock, for stats
        self._seconds = 0.0

    def start(self, seconds: float, kind: str = "503",
              names: tuple[str, str] = ("seconds", "kind")) -> dict[str, Any]:
        """Open a window now for `seconds` (replacing any open one); what stats() will say."""
        check(seconds, kind, names)
        with self._lock:
            self._open(float(seconds), kind)
            return self._report()

    def refusal(self) -> str | None:
        """For a chat request arriving now: the outage kind when it is refused, else None."""
        with self._lock:
            self._chat_requests += 1
            planned = self._planned
            if planned is not None and self._chat_requests == planned.after_requests:
                self._open(planned.seconds, planned.kind)
            if self._until is not None and self._clock() < self._until:
                return self._kind
            return None

    def report(self) -> dict[str, Any]:
        """outage_active, outage_kind, outage_started_at and outage_ended_at (wall-clock
        seconds; ended_at is None while the window is open) of the last window."""
        with self._lock:
            return self._report()

    def _open(self, seconds: float, kind: str) -> None:
        self._kind, self._seconds = kind, seconds
        self._until = self._clock() + seconds
        self._started_at = self._wall()

    def _report(self) -> dict[str, Any]:
        active = self._until is not None and self._clock() < self._until
        ended = None
        if self._started_at is not None and not active:
            ended = self._started_at + self._seconds
        return {
            "outage_active": active,
            "outage_kind": self._kind if self._started_at is not None else None,
            "outage_started_at": self._started_at,
            "outage_ended_at": ended,
        }
