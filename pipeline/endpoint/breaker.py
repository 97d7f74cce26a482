"""Telling an outage from a bad row.

A request can fail for what it carries (an image the model chokes on: the endpoint answers
others meanwhile) or because the endpoint is down (an update, an incident: it answers nobody).
Only the first is the row's failure. A client's `Breaker` watches its requests and opens when

- `open_after` requests in a row (a window's worth: the client's concurrency, at least
  OPEN_AFTER) have met a 5xx, a refused connection or a timeout, or
- one request has used up its retries on them,

with no answer in between to a request sent since the failures began. (An answer to a
request sent earlier says nothing about the endpoint now: one accepted just before an update
is answered after the update has begun refusing everything else.)

While it is open the client sends nothing: every request it is asked for ends at once, put
off (`deferred`), to be asked again when the endpoint is back. On the driver the run then
probes the endpoint at a slow rate (pipeline/runs/recovery.py) and closes the breaker when it
answers; in an asking task on an executor, the task hands its rows back put off and the
driver does the same.
"""

from __future__ import annotations

import threading
import time

from pipeline.outcomes import ErrorClass

# Failures that say the endpoint, not the request, is in trouble.
OUTAGE = frozenset({ErrorClass.SERVER_ERROR, ErrorClass.CONNECTION_ERROR, ErrorClass.TIMEOUT})
# Distinct requests in a row that met one of them, with no fresh answer between, before the
# client stops sending: at least a few (one request's retries count once), and at least the
# requests one window of the client's concurrency holds, so that rows' own 500s, scattered
# among many requests in flight, are not taken for an outage.
OPEN_AFTER = 5


class Breaker:
    """Shared by the requests of one client, on its event loop and by the driver's recovery
    from another thread (hence the lock). Times are time.monotonic()."""

    def __init__(self, open_after: int = OPEN_AFTER) -> None:
        self._lock = threading.Lock()
        self.open_after = open_after
        self._failing = 0  # requests in a row that met an outage failure
        self._failing_since: float | None = None  # when the first of them failed
        self._life = float("-inf")  # when the latest request that was answered was sent
        self.open = False
        self.opened_at: float | None = None  # time.time()
        self.cause: str | None = None  # the last outage failure, as the client wrote it

    def alive(self, sent_at: float) -> None:
        """The endpoint answered (anything but a 5xx or a 429) a request sent at `sent_at`.
        If it was sent since the failures began, they were no outage, or it is over."""
        with self._lock:
            self._life = max(self._life, sent_at)
            if self._failing_since is None or sent_at >= self._failing_since:
                self._failing, self._failing_since = 0, None
                self._close()

    def failed(self, first: bool, message: str | None) -> float:
        """A request met an outage failure (`first`: its first one since it began). Returns
        the time of the failure."""
        now = time.monotonic()
        with self._lock:
            self.cause = message
            if first:
                self._failing += 1
                if self._failing_since is None:
                    self._failing_since = now
            if self._failing >= self.open_after:
                self._open()
        return now

    def exhausted(self, first_failed_at: float) -> bool:
        """A request used up its retries (two attempts or more) on outage failures, the first
        at `first_failed_at`. If no request sent since then was answered, the endpoint, not
        this request, is the likelier cause: the breaker opens and this says so."""
        with self._lock:
            if self._life >= first_failed_at:
                return False
            self._open()
            return True

    def close(self) -> None:
        """The endpoint answers again (a probe said so)."""
        with self._lock:
            self._failing, self._failing_since = 0, None
            self._close()

    def _open(self) -> None:
        if not self.open:
            self.open, self.opened_at = True, time.time()

    def _close(self) -> None:
        self.open, self.opened_at = False, None
