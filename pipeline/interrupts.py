"""Ctrl-C and SIGTERM during a run: the first signal stops the run in good order, a second ends
the process at once.

In good order means: no new request starts; requests already sent get GRACE_S to answer
(then they are cancelled); every batch answered by then is merged; the run is recorded as
`interrupted` with what it really wrote; the command exits 128 + the signal (130, 143) with
one line. Rows already committed are Delta commits, so nothing committed is ever lost, and a
rerun resumes from them.

What "stop" does depends on where the run is, so the run tells `Stop` how to halt
(`halting_with`): while Spark starts, the stop waits for it to be up (a JVM whose launch is
cut short outlives the process); then, with nothing to save yet, the run ends at once; before
the first request, Spark's running work is interrupted; during the batch loop, the loop's own
halt lets answers in and merges before interrupting Spark.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long requests already sent may take to answer once a stop is asked for: their answers
# are paid for, and merging them saves a rerun the cost.
GRACE_S = 5.0


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal. A KeyboardInterrupt, so that no `except Exception`
    on the way takes it for an ordinary failure."""

    def __init__(self, signum: int, result: Any = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.result = signum, result

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Stop:
    """The run's stop switch, thrown by the first SIGINT or SIGTERM."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._event = threading.Event()
        self._halt: Callable[[], object] | None = None
        self._halting: threading.Thread | None = None
        self.installed = False

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, less if a stop comes; whether one came."""
        return self._event.wait(seconds)

    def install(self) -> None:
        """Handle SIGINT and SIGTERM. Again after Spark starts: a classic SparkContext puts
        its own SIGINT handler in place. Only Python's main thread may: elsewhere (a
        notebook's cell, a host that runs us in a thread) signals stay as the host has them."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        self.installed = True

    def halting_with(self, halt: Callable[[], object] | None) -> None:
        """What the first signal does from now on, in a thread of its own: end the work in
        progress (what `halt` returns is dropped). None: raise Interrupted in the main thread
        (nothing to save yet)."""
        self._halt = halt

    def request(self, signum: int = signal.SIGINT) -> None:
        """Stop as a signal would (the signal handler's work, callable from any thread)."""
        if self._event.is_set():
            return
        self.signum = signum
        self._event.set()
        if self._halt is not None:
            self._halting = threading.Thread(target=quietly, args=(self._halt,), daemon=True,
                                             name="vision-batch-stop")
            self._halting.start()

    def wait_halted(self) -> None:
        """Wait for the halt a stop started, if any, to be done."""
        if self._halting is not None:
            self._halting.join()

    def _handle(self, signum: int, frame: object) -> None:
        if self._event.is_set():  # the second one: committed rows are safe, go now
            _say(f"vision-batch: {signal.Signals(signum).name} again: exiting now; "
                 "rows already committed are kept and a rerun resumes\n")
            os._exit(128 + signum)
        _say(f"vision-batch: {signal.Signals(signum).name}: stopping; no new requests, "
             "answers already in are being saved (again to exit at once)\n")
        self.request(signum)
        if self._halt is None:
            raise Interrupted(signum)


def only_mark() -> None:
    """The halt once nothing is left to stop (the run is writing its last row): the signal
    only marks the run as stopped."""


def quietly(action: Callable[[], object]) -> None:
    """Do `action`, and let it fail: a halt, or housekeeping; what it stops or serves reports
    for itself."""
    try:
        action()
    except Exception:  # noqa: S110 - see above
        pass


def _say(line: str) -> None:
    os.write(2, line.encode())  # a signal handler must not wait on sys.stderr's lock
