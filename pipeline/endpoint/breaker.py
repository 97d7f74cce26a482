"""Telling an outage from a bad row.

A request can fail for what it carries (an image the model chokes on: the endpoint answers
others meanwhile) or because the endpoint is down (an update, an incident: it answers nobody).
Only the first is the row's failure. A client's `Breaker` watches its requests: once
OPEN_AFTER requests in a row have met a 5xx, a refused connection or a timeout with no
answer between them, or one request has used up its attempts while nothing else was
answered, it opens. While it is open the client sends nothing: every request it is asked for
ends at once, put off (`deferred`), to be asked again when the endpoint is back. On the
driver the run then probes the endpoint at a slow rate (pipeline/runs/recovery.py) and
closes the breaker when it answers; in an asking task on an executor, the task hands its
rows back put off and the driver does the same.
"""

from __future__ import annotations

import threading
import time

from pipeline.outcomes import ErrorClass

# Failures that say the endpoint, not the request, is in trouble.
OUTAGE = frozenset({ErrorClass.SERVER_ERROR, ErrorClass.CONNECTION_ERROR, ErrorClass.TIMEOUT})
# Distinct requests in a row that met one of them, with no answer between, before the client
# stops sending. A few: one request's retries count once, and a row's own 500s are broken up
# by the answers other rows get.
OPEN_AFTER = 5


class Breaker:
    """Shared by the requests of one client, on its event loop and by the driver's recovery
    from another thread (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = 0  # answers (any HTTP answer but a 5xx or 429) so far
        self._failing = 0  # requests in a row that met an outage failure
        self.open = False
        self.opened_at: float | None = None  # time.time()
        self.cause: str | None = None  # the last outage failure, as the client wrote it

    def alive(self) -> None:
        """The endpoint answered: whatever failed before was not an outage, or is over."""
        with self._lock:
            self.answered += 1
            self._failing = 0
            self._close()

    def failed(self, first: bool, message: str | None) -> None:
        """A request met an outage failure (`first`: its first one since it began)."""
        with self._lock:
            self.cause = message
            self._failing += first
            if self._failing >= OPEN_AFTER:
                self._open()

    def exhausted(self, answered_before: int) -> bool:
        """A request used up its attempts on outage failures. Whether that is an outage:
        nothing was answered since its first such failure (`answered_before` is `answered`
        then), so the endpoint, not this request, is the likelier cause. Then the breaker
        opens. (Since its first failure, not since it began: answers that came in before the
        endpoint went down say nothing about what it does now.)"""
        with self._lock:
            if self.answered != answered_before:
                return False
            self._open()
            return True

    def close(self) -> None:
        """The endpoint answers again (a probe said so)."""
        with self._lock:
            self._failing = 0
            self._close()

    def _open(self) -> None:
        if not self.open:
            self.open, self.opened_at = True, time.time()

    def _close(self) -> None:
        self.open, self.opened_at = False, None
