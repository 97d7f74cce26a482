"""What no row can mend, mended by the run: refused credentials and endpoint outages.

Requests put off for these (`DEFERRED` answer rows: pipeline/endpoint/breaker.py, and the
client's handling of a 401/403) get no row; their files come back in a later batch of the
same run (pipeline/runs/loop.py, `Requeue`). Before each batch is asked, `Recovery.ready`:

- credentials refused somewhere: asks the driver's source for fresh ones (the SDK renews an
  OAuth token; a new configuration when it still trusts the refused one), and checks them
  with one probe. Refused again right after the refresh: the run fails, in one line.
- an outage (a breaker opened, on the driver or in an asking task): says so in one line,
  sends nothing but a probe, first after PROBE_FIRST_S and then at most every PROBE_MAX_S,
  until the endpoint answers; then it says so and the run goes on at full speed. An outage
  longer than `--max-outage-seconds` ends the run, in one line, with every answer kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.endpoint.auth import AuthError, CredentialSource
from pipeline.endpoint.breaker import OUTAGE, Breaker
from pipeline.endpoint.client import probe
from pipeline.errors import RunError
from pipeline.interrupts import Stop
from pipeline.outcomes import ErrorClass

PROBE_FIRST_S = 1.0  # the first probe of an outage, then twice as long each time...
PROBE_MAX_S = 15.0  # ...up to this: a 90 s outage costs about ten probes
PROBE_TIMEOUT_S = 30.0  # a probe that hangs longer is an outage's timeout


class OutageError(RunError):
    """The endpoint was down for longer than the run waits."""


@dataclass(frozen=True)
class Outage:
    since: float  # epoch seconds
    seconds: float
    probes: int


class Recovery:
    """The driver's side of the run's health. `note` hears of the rows put off (from the
    commit thread); `ready` is called before each batch is asked (the main thread)."""

    def __init__(self, source: CredentialSource, url: str, model: str | None,
                 max_outage_s: float, progress: Callable[[str], None], stop: Stop,
                 timeout_s: float = PROBE_TIMEOUT_S, breaker: Breaker | None = None) -> None:
        self.source, self.url, self.model = source, url, model
        self.max_outage_s, self.progress, self.stop = max_outage_s, progress, stop
        self.timeout_s, self.breaker = min(timeout_s, PROBE_TIMEOUT_S), breaker
        self.outages: list[Outage] = []
        self.put_off = 0  # files put off, to be asked again
        self.renewed = 0  # times credentials refused mid-run were replaced
        self._lock = threading.Lock()
        self._refused = False
        self._down: tuple[float, str] | None = None  # since when, what the endpoint said

    def note(self, deferred: Iterable[dict[str, Any]], files: int) -> None:
        """Answer rows put off, and the files that go back with them."""
        with self._lock:
            self.put_off += files
            for row in deferred:
                if row["error_class"] == ErrorClass.AUTH:
                    self._refused = True
                elif row["error_class"] in OUTAGE and self._down is None:
                    self._down = (time.time(), row["error_message"] or str(row["error_class"]))

    def ready(self) -> None:
        """Return once the next batch may be asked: credentials renewed if any were refused,
        the endpoint answering again if it was down (or a stop came). Raises AuthError or
        OutageError when the run cannot go on."""
        if self.breaker is not None and self.breaker.open:
            with self._lock:
                if self._down is None:
                    self._down = (self.breaker.opened_at or time.time(),
                                  self.breaker.cause or "no answer")
        with self._lock:
            refused, down = self._refused, self._down
        if refused:
            self._renew()
        if down is not None:
            self._wait_out(*down)

    def _renew(self) -> None:
        credentials = self.source.current()
        kind, said = probe(self.url, credentials, self.model, self.timeout_s)
        if kind == ErrorClass.AUTH:
            credentials = self.source.refreshed(credentials)
            kind, said = probe(self.url, credentials, self.model, self.timeout_s)
            if kind == ErrorClass.AUTH:
                raise AuthError(
                    f"{self.source.host} refused the run's credentials right after they were "
                    f"refreshed ({said}): check that this identity may query the endpoint; "
                    "answers so far are kept and a rerun resumes")
        with self._lock:
            self._refused = False
            self.renewed += 1
            if kind in OUTAGE and self._down is None:
                self._down = (time.time(), said)
        self.progress("credentials refused during the run: renewed; the requests put off "
                      "are asked again")

    def _wait_out(self, since: float, said: str) -> None:
        self.progress(f"endpoint down since {_clock(since)} ({said}): requests paused; "
                      f"probing it every {PROBE_MAX_S:g} s at most, for up to "
                      f"{self.max_outage_s:g} s")
        interval, probes = PROBE_FIRST_S, 0
        while True:
            left = since + self.max_outage_s - time.time()
            if left <= 0:
                raise OutageError(
                    f"the endpoint failed every request for {time.time() - since:.0f} s (since "
                    f"{_clock(since)}: {said}), longer than --max-outage-seconds "
                    f"{self.max_outage_s:g}; answers so far are kept and a rerun resumes")
            if self.stop.wait(min(interval, left)):
                return  # the loop sees the stop and ends in good order
            kind, answer = probe(self.url, self.source.current(), self.model, self.timeout_s)
            probes += 1
            if kind not in OUTAGE:
                break
            said, interval = answer, min(interval * 2, PROBE_MAX_S)
        seconds = time.time() - since
        with self._lock:
            self._down = None
            self._refused |= kind == ErrorClass.AUTH
            self.outages.append(Outage(since, seconds, probes))
        if self.breaker is not None:
            self.breaker.close()
        self.progress(f"endpoint back after {seconds:.0f} s ({probes} probe(s)): asking again")
        if kind == ErrorClass.AUTH:
            self._renew()

    @property
    def outage_s(self) -> float:
        return sum(o.seconds for o in self.outages)

    def said(self) -> list[str]:
        """The summary's line on what the run waited out, if anything."""
        if not self.outages and not self.put_off:
            return []
        parts = []
        if self.outages:
            parts.append(f"endpoint down {self.outage_s:.0f} s in {len(self.outages)} "
                         f"outage(s), {sum(o.probes for o in self.outages)} probe(s)")
        if self.renewed:
            parts.append(f"credentials renewed {self.renewed} time(s)")
        parts.append(f"{self.put_off} file(s) put off and asked again")
        return ["  waited  " + "; ".join(parts)]


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%H:%M:%S")
