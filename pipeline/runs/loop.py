"""The batch loop every path shares: prepare ▸ ask ▸ commit, with the stages of consecutive
batches overlapping so the endpoint never waits for Spark.

    claims thread    plan stream -> the units this run holds (pipeline/runs/claims.py)
    prepare thread   claimed batch -> prepare batch k+1 (Spark: read, decode, resize; cached)
    main thread      ask batch k (executors: one Spark job; driver: stream to the client)
    commit thread    rows of batch k-1 -> MERGE, totals, progress (in order, one at a time)

At most IN_FLIGHT batches are between "requests started" and "rows committed". One batch
waits prepared ahead of the one being asked, so its images are ready the moment they are
wanted.

Files whose requests were put off (credentials refused, an outage: pipeline/runs/recovery.py)
get no row; they come back as batches of their own (`Requeue`), asked once the run's
`Recovery` says the endpoint can be asked again, at most MAX_PUT_OFF times each.

A stop (Ctrl-C, SIGTERM: pipeline/interrupts.py) ends the loop in good order: no batch is
asked after it, the requests already sent get GRACE_S to answer, everything answered is
committed, and only then is Spark's remaining work (the batch being prepared, an asking job
that outlived the grace) interrupted, between two commits.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, Protocol

from pipeline.interrupts import GRACE_S, Stop, only_mark
from pipeline.outcomes import DEFERRED, Status
from pipeline.progress import Update, update
from pipeline.runs.callers import Ask
from pipeline.runs.context import RunResult
from pipeline.runs.journal import Journal
from pipeline.runs.plan import Batch, Entry, Plan, cut
from pipeline.runs.prepare import Prepared
from pipeline.runs.recovery import Recovery

# Batches whose requests have started and whose rows are not yet committed: one being asked
# while the one before it is committed (or, with the driver caller, still draining).
IN_FLIGHT = 2
PREPARED_AHEAD = 1  # batches prepared and waiting to be asked
# Times a file may be put off and asked again; past it, its put-off answer is written as the
# failure it was. Outages are bounded by time (--max-outage-seconds) well before this, and a
# refused credential fails the run: this only stops a file that fails alone from cycling.
MAX_PUT_OFF = 3


class RunPath(Protocol):
    """What a path supplies to the loop (pipeline/runs/single.py, grouped.py)."""

    def prepare(self, batch: Batch) -> Prepared: ...
    def ask(self, prepared: Prepared) -> Ask | None: ...
    def rows(self, prepared: Prepared, answers: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
    def write(self, batches: list[Prepared], captions: list[dict[str, Any]]) -> None: ...
    def detail(self) -> str: ...
    def durable(self, prepared: Prepared, answers: list[dict[str, Any]]
                ) -> dict[str, list[dict[str, Any]]]: ...


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
          claims: Claimer | None = None, recovery: Recovery | None = None,
          batch_size: int = 1000, journal: Journal | None = None) -> None:
    """Run every batch of `plan`, and return once the last one is committed, or once what
    was answered before a `stop` is. No row is written before `before_writing` is done (the
    runs-table row that says the run started), so every row of the captions table names a
    run the runs table knows. `interrupt` ends Spark's work in progress (spark.interruptAll).
    With `claims`, only the units this run holds are asked, claimed in a thread of their own
    a chunk ahead of the prepare thread. With `recovery`, files put off come back in batches
    of up to `batch_size` files, asked once it says the endpoint may be asked. With
    `journal`, answers are made durable as they arrive, before their batch is committed."""
    stop = stop or Stop()
    slots = threading.BoundedSemaphore(IN_FLIGHT)
    requeue = Requeue(batch_size, stop)

    def prepared_batches(batches: Iterable[Batch]) -> Iterator[Prepared]:
        for batch in batches:
            began = result.tick()
            prepared = path.prepare(batch)
            _stamp(result, batch.number, "prepare", began)
            yield prepared

    with ExitStack() as stack:
        planned = plan.stream if claims is None else claims.batches(plan.stream)
        batches: Iterable[Batch] = stack.enter_context(
            Ahead(requeue.batches(planned), 1, stop, name="vision-batch-claims"))
        ready = stack.enter_context(Ahead(prepared_batches(batches), PREPARED_AHEAD, stop))
        committer = stack.enter_context(
            Committer(path, plan, result, progress, slots, before_writing, requeue, recovery,
                      stop, journal))
        stack.callback(requeue.close)  # first of all on the way out: nothing more comes back

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
                if recovery is not None and not stop.requested:
                    recovery.ready()  # credentials renewed, an outage waited out
                if stop.requested:
                    slots.release()
                    prepared.release()
                    break
                asked_at = result.tick()
                try:
                    if prepared.batch.claim is not None:  # asked only once claimed
                        prepared.narrow(prepared.batch.claim.result())
                    wanted = path.ask(prepared)
                    if wanted is not None and journal is not None:
                        wanted = replace(wanted, on_answers=functools.partial(
                            _journaled, journal, path, prepared))
                    answers = caller.ask(wanted, stop) if wanted is not None else _nothing()
                finally:
                    prepared.release()  # the images are asked about, or never will be
                answers.add_done_callback(
                    _stamp_when_done(result, prepared.batch.number, "ask", asked_at))
                committer.submit(prepared, answers)
            committer.finish()
        except BaseException as exc:
            if journal is not None and isinstance(exc, Exception):
                # The run fails: no request starts, those sent get the grace to answer, and
                # their answers reach the journal (paid for: the next run folds them in).
                caller.settle(time.monotonic() + GRACE_S)
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
                 before_writing: Future | None = None, requeue: Requeue | None = None,
                 recovery: Recovery | None = None, stop: Stop | None = None,
                 journal: Journal | None = None) -> None:
        self.path, self.plan, self.result, self.progress = path, plan, result, progress
        self.slots, self.before_writing = slots, before_writing
        self.requeue, self.recovery, self.stop = requeue, recovery, stop or Stop()
        self.journal = journal
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
            rows, back = [], []
            for prepared, answers in group:
                kept, deferred = self._sort_out(answers.result())
                batch_rows = self.path.rows(prepared, kept)
                written = {row["path"] for row in batch_rows}
                rows.append(batch_rows)
                # Files with no row: put off (they come back), or cut short by a stop (a
                # rerun asks them).
                back.append([e for e in prepared.batch.entries if e.path not in written])
                if deferred and self.recovery is not None:
                    self.recovery.note(deferred, len(back[-1]))
            if self.before_writing is not None:
                self.before_writing.result()
            began = self.result.tick()
            with self._writing:
                self.path.write([p for p, _ in group], [r for batch in rows for r in batch])
            for prepared, _ in group:
                _stamp(self.result, prepared.batch.number, "commit", began)
            if self.journal is not None:
                self.journal.committed(p.batch.number for p, _ in group)
        finally:
            for _ in group:
                self.slots.release()
        for (prepared, _), batch_rows, missing in zip(group, rows, back, strict=True):
            self.result.add(batch_rows)
            self._done_files += len(prepared.batch.entries) - len(missing)
            if self.requeue is not None:
                self.requeue.settle(missing if not self.stop.requested else [])
            self.result.tick()
            total = self.plan.batches + (self.requeue.extra if self.requeue else 0)
            self.progress(update("batch", self.result, self.plan.pending, total,
                                 prepared.batch.number, self.path.detail(), self._done_files,
                                 self.plan.approximate))

    def _sort_out(self, answers: list[dict[str, Any]]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(answers to write, answers put off). A put-off answer is dropped, so its file
        gets no row and comes back; after a stop it is dropped too (a rerun asks it); a
        file put off MAX_PUT_OFF times already is written as the failure it was. A group
        is put off whole: one part put off drops its other parts."""
        deferred = [a for a in answers if a["status"] == DEFERRED]
        if not deferred:
            return answers, []
        units = {_unit(a) for a in deferred}
        again = {u for u in units if self.stop.requested
                 or (self.requeue is not None and self.requeue.admits(u))}
        kept = []
        for answer in answers:
            if _unit(answer) in again:
                continue
            if answer["status"] == DEFERRED:
                answer = {**answer, "status": Status.FAILED}
            kept.append(answer)
        return kept, [a for a in deferred if _unit(a) in again]


def _journaled(journal: Journal, path: RunPath, prepared: Prepared,
               answers: list[dict[str, Any]]) -> None:
    """Answers of a batch, as they arrive, into the run's journal."""
    journal.add(prepared.batch.number, path.durable(prepared, answers))


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


def _unit(answer: dict[str, Any]) -> str:
    """An answer row's unit (pipeline/runs/plan.py, Entry.unit): a group part's group, or an
    image's file."""
    key = answer.get("group_key")
    return f"group:{key}" if key is not None and "part" in answer else answer["path"]


class Requeue:
    """Files put off come back as batches of their own, after the batches of the plan under
    way; the stream ends once no batch is out (handed on, not yet committed) and none is
    waiting. Every batch it hands on is numbered again, in order, from 1."""

    def __init__(self, size: int, stop: Stop) -> None:
        self.size, self.stop = size, stop
        self.extra = 0  # batches made of files put off
        self._times: Counter[str] = Counter()  # unit -> times put off
        self._waiting: list[Entry] = []
        self._out = 0
        self._closed = False
        self._number = 0
        self._changed = threading.Condition()

    def admits(self, unit: str) -> bool:
        """Whether `unit` may be put off once more."""
        with self._changed:
            return self._times[unit] < MAX_PUT_OFF

    def settle(self, missing: list[Entry]) -> None:
        """A batch handed on is committed; `missing` are its files left without a row, to
        be asked again."""
        with self._changed:
            self._out -= 1
            for unit in {e.unit for e in missing}:
                self._times[unit] += 1
            # A file is written `failed` before it passes MAX_PUT_OFF (Committer._sort_out);
            # one still without a row then is left for a rerun, never cycled for good.
            self._waiting.extend(e for e in missing if self._times[e.unit] <= MAX_PUT_OFF)
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def batches(self, stream: Iterable[Batch]) -> Iterator[Batch]:
        for batch in stream:
            yield from self._again()
            yield self._handed(batch)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._out == 0
                                       or self._closed or self.stop.requested, timeout=1.0)
                if self._closed or self.stop.requested or not (self._waiting or self._out):
                    return
            yield from self._again()

    def _again(self) -> Iterator[Batch]:
        with self._changed:
            entries, self._waiting = self._waiting, []
        entries.sort(key=lambda e: (e.unit, e.path))
        for batch in cut(entries, self.size, lambda e: e.unit):
            self.extra += 1
            yield self._handed(batch)

    def _handed(self, batch: Batch) -> Batch:
        with self._changed:
            self._out += 1
            self._number += 1
            return replace(batch, number=self._number)


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
