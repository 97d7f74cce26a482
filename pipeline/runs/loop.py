"""The batch loop every path shares: prepare ▸ ask ▸ commit, with the stages of consecutive
batches overlapping so the endpoint never waits for Spark.

    claims thread    plan stream -> the units this run holds (pipeline/runs/claims.py)
    prepare thread   claimed batch -> prepare batch k+1 (Spark: read, decode, resize; cached)
    main thread      ask batch k (executors: one Spark job; driver: stream to the client)
    commit thread    rows of batch k-1 -> MERGE, totals, progress (in order, one at a time)

At most IN_FLIGHT batches are between "requests started" and "rows committed": that is what
a `kill -9` can lose, and so what a rerun may pay for twice (see README). One batch waits
prepared ahead of the one being asked, so its images are ready the moment they are wanted.

A stop (Ctrl-C, SIGTERM: pipeline/interrupts.py) ends the loop in good order: no batch is
asked after it, the requests already sent get GRACE_S to answer, everything answered is
committed, and only then is Spark's remaining work (the batch being prepared, an asking job
that outlived the grace) interrupted, between two commits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from typing import Any, Protocol

from pipeline.interrupts import GRACE_S, Stop, only_mark
from pipeline.progress import Update, update
from pipeline.runs.callers import Ask
from pipeline.runs.context import RunResult
from pipeline.runs.plan import Batch, Plan
from pipeline.runs.prepare import Prepared

# Batches whose requests have started and whose rows are not yet committed: one being asked
# while the one before it is committed (or, with the driver caller, still draining).
IN_FLIGHT = 2
PREPARED_AHEAD = 1  # batches prepared and waiting to be asked


class RunPath(Protocol):
    """What a path supplies to the loop (pipeline/runs/single.py, grouped.py)."""

    def prepare(self, batch: Batch) -> Prepared: ...
    def ask(self, prepared: Prepared) -> Ask | None: ...
    def rows(self, prepared: Prepared, answers: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
    def write(self, batches: list[Prepared], captions: list[dict[str, Any]]) -> None: ...
    def detail(self) -> str: ...


class Caller(Protocol):
    def ask(self, ask: Ask, stop: Stop) -> Future: ...
    def settle(self, deadline: float) -> None: ...
    def cancel(self) -> None: ...


class Claimer(Protocol):
    """The plan's batches cut to what this run holds (pipeline/runs/claims.py)."""

    def batches(self, stream: Iterable[Batch]) -> Iterator[Batch]: ...


def drive(path: RunPath, plan: Plan, caller: Caller, result: RunResult,
          progress: Callable[[Update], None], before_writing: Future | None = None,
          stop: Stop | None = None, interrupt: Callable[[], object] = lambda: None,
          claims: Claimer | None = None) -> None:
    """Run every batch of `plan`, and return once the last one is committed, or once what
    was answered before a `stop` is. No row is written before `before_writing` is done (the
    runs-table row that says the run started), so every row of the captions table names a
    run the runs table knows. `interrupt` ends Spark's work in progress (spark.interruptAll).
    With `claims`, only the units this run holds are asked, claimed in a thread of their own
    a chunk ahead of the prepare thread."""
    stop = stop or Stop()
    slots = threading.BoundedSemaphore(IN_FLIGHT)

    def prepared_batches(batches: Iterable[Batch]) -> Iterator[Prepared]:
        for batch in batches:
            began = result.tick()
            prepared = path.prepare(batch)
            _stamp(result, batch.number, "prepare", began)
            yield prepared

    with ExitStack() as stack:
        batches: Iterable[Batch] = plan.stream if claims is None else stack.enter_context(
            Ahead(claims.batches(plan.stream), 1, stop, name="vision-batch-claims"))
        ready = stack.enter_context(Ahead(prepared_batches(batches), PREPARED_AHEAD, stop))
        committer = stack.enter_context(
            Committer(path, plan, result, progress, slots, before_writing))

        def halt() -> None:
            """On a stop: answers in, then Spark's leftover work interrupted between commits."""
            caller.settle(time.monotonic() + GRACE_S)
            if before_writing is not None:  # the run's row: every commit needs it
                before_writing.exception()
            with committer.between_commits():
                interrupt()

        stop.halting_with(halt)
        try:
            for prepared in ready:
                committer.check()
                slots.acquire()
                committer.check()
                if stop.requested:
                    slots.release()
                    prepared.release()
                    break
                asked_at = result.tick()
                try:
                    wanted = path.ask(prepared)
                    answers = caller.ask(wanted, stop) if wanted is not None else _nothing()
                finally:
                    prepared.release()  # the images are asked about, or never will be
                answers.add_done_callback(
                    _stamp_when_done(result, prepared.batch.number, "ask", asked_at))
                committer.submit(prepared, answers)
            committer.finish()
        except BaseException:
            caller.cancel()  # what is answered still commits; the rest stops
            raise
        finally:
            stop.halting_with(only_mark)
            stop.wait_halted()  # a halt under way ends before the run's row is written


class Committer:
    """The commit thread: answered batches, in order, into the tables. Batches that are all
    answered by the time the one before them is committed go in the same MERGE: when the
    table is slower than the endpoint, it takes fewer, larger writes, and the endpoint does
    not wait for it."""

    def __init__(self, path: RunPath, plan: Plan, result: RunResult,
                 progress: Callable[[Update], None], slots: threading.BoundedSemaphore,
                 before_writing: Future | None = None) -> None:
        self.path, self.plan, self.result, self.progress = path, plan, result, progress
        self.slots, self.before_writing = slots, before_writing
        self._waiting: deque[tuple[Prepared, Future]] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._writing = threading.Lock()  # held while a batch is written
        self._error: BaseException | None = None
        self._done_files = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="vision-batch-commit")

    def __enter__(self) -> Committer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:  # on an error: what is already answered still commits
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def submit(self, prepared: Prepared, answers: Future) -> None:
        with self._changed:
            self._waiting.append((prepared, answers))
            self._changed.notify_all()

    def check(self) -> None:
        """Raise the commit thread's error, if it had one."""
        if self._error is not None:
            raise self._error

    def between_commits(self) -> threading.Lock:
        """Held, no commit is under way and none starts (`with committer.between_commits():`)."""
        return self._writing

    def finish(self) -> None:
        """Wait until every submitted batch is committed."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        self.check()

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._waiting or self._closing)
                    if not self._waiting:
                        return
                    head = self._waiting[0][1]
                head.exception()  # wait for the oldest batch's answers (raised below)
                with self._changed:
                    group = [self._waiting.popleft()]
                    while self._waiting and self._waiting[0][1].done():
                        group.append(self._waiting.popleft())
                self._commit(group)
        except BaseException as exc:  # handed to the main thread by check()
            self._error = exc
            with self._changed:
                for _ in self._waiting:
                    self.slots.release()
                self._waiting.clear()

    def _commit(self, group: list[tuple[Prepared, Future]]) -> None:
        try:
            rows = [self.path.rows(prepared, answers.result()) for prepared, answers in group]
            if self.before_writing is not None:
                self.before_writing.result()
            began = self.result.tick()
            with self._writing:
                self.path.write([p for p, _ in group], [r for batch in rows for r in batch])
            for prepared, _ in group:
                _stamp(self.result, prepared.batch.number, "commit", began)
        finally:
            for _ in group:
                self.slots.release()
        for (prepared, _), batch_rows in zip(group, rows, strict=True):
            self.result.add(batch_rows)
            self._done_files += len(prepared.batch.entries)
            self.result.tick()
            self.progress(update("batch", self.result, self.plan.pending, self.plan.batches,
                                 prepared.batch.number, self.path.detail(), self._done_files,
                                 self.plan.approximate))


def _nothing() -> Future:
    future: Future = Future()
    future.set_result([])
    return future


def _stamp(result: RunResult, batch: int, stage: str, began: float) -> None:
    result.timeline.append((batch, stage, began, time.time() - result.started))


def _stamp_when_done(result: RunResult, batch: int, stage: str,
                     began: float) -> Callable[[Future], None]:
    """A future's done-callback stamping the stage's end (its arguments bound now)."""
    return lambda _: _stamp(result, batch, stage, began)


class Ahead:
    """Iterate `items` in a thread of its own, up to `depth` items ahead of the consumer."""

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int, stop: Stop | None = None,
                 name: str = "vision-batch-prepare") -> None:
        self._items = items
        self._stopped = stop or Stop()  # the consumer is let go at once on a stop
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name=name)

    def __enter__(self) -> Iterator[Any]:
        self._thread.start()
        return self._drain()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a pending put, and release what was prepared for nothing
                item = self._queue.get(timeout=0.1)
                if isinstance(item, Prepared):
                    item.release()
            except queue.Empty:
                pass
        self._thread.join()

    def _fill(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    if isinstance(item, Prepared):
                        item.release()
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _drain(self) -> Iterator[Any]:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopped.requested:
                    return
                continue
            if item is self._END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
