"""Where the requests are sent from (`--caller executors|driver`).

- executors: a Spark job per batch, whose tasks each ask with a fixed share of the run's
  concurrency budget (pandas UDFs: the classic-cluster way). Batches are asked one after
  another, since two jobs at once would each take a full share; the next batch is prepared
  and the last one committed meanwhile. Each batch pays the job's start (a few tenths of a
  second) and the drain of its last requests.
- driver: one async client on the driver for the whole run (for compute whose UDFs cannot
  reach the network, such as serverless). The prepared images stream to it from the
  executors' cache a partition at a time, and it holds a bounded window of them; the next
  batch's images follow as soon as this batch's are handed over, so the budget stays full
  across batch boundaries.

Both ask through the same `CallPlan` (pipeline/endpoint/asking.py) and return the same answer rows.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from pipeline.endpoint.asking import CallPlan, LoopThread, Member
from pipeline.endpoint.auth import CredentialSource
from pipeline.endpoint.breaker import Breaker
from pipeline.endpoint.client import CaptionClient
from pipeline.interrupts import Stop
from pipeline.outcomes import DEFERRED
from pipeline.runs.udfs import answer_schema, ask_in_tasks
from pipeline.spark import parallelism

CALLERS = ("auto", "executors", "driver")
# Requests in flight one asking task drives comfortably: the client spends about 2 ms of CPU
# per request, so past this a second task (a second core) shares the work.
REQUESTS_PER_TASK = 32
# Images the driver caller holds: those in flight and those waiting for a slot.
WINDOW_PER_SLOT = 2
# The executor caller asks a batch in jobs of about this many seconds' worth of units (what a
# crash can lose), the first of this many units per request in flight.
CHUNK_S = 5.0
FIRST_CHUNK_PER_SLOT = 4


@dataclass(frozen=True)
class Ask:
    """What one batch asks: members (MEMBER_COLUMNS, group_key for groups), and the paths of
    each unit of work (an image, or a group's images), in order."""

    members: DataFrame
    paths: tuple[tuple[str, ...], ...]
    by_group: bool = False
    # Called with each lot of answer rows as it arrives, before the batch is done: the
    # journal makes them durable (pipeline/runs/journal.py).
    on_answers: Callable[[list[dict[str, Any]]], None] | None = None

    @property
    def units(self) -> int:
        return len(self.paths)


def arrange(ask: Ask, tasks: int | None) -> DataFrame:
    """The members in `tasks` partitions (or as they are, for None); a group's members
    together, by path."""
    if ask.by_group:
        frame = (ask.members.repartition(tasks, "group_key") if tasks
                 else ask.members.repartition("group_key"))
        return frame.sortWithinPartitions("group_key", "path")
    return ask.members.coalesce(tasks) if tasks else ask.members


def completed(rows: list[dict[str, Any]]) -> Future:
    future: Future = Future()
    future.set_result(rows)
    return future


class ExecutorCaller:
    kind = "executors"
    breaker = None  # each asking task has its own; the driver hears of an outage from rows

    def __init__(self, spark: SparkSession, plan: CallPlan, source: CredentialSource) -> None:
        self.spark, self.plan, self.source = spark, plan, source
        self._idle = threading.Event()  # no asking job is running
        self._idle.set()

    def __enter__(self) -> ExecutorCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def tasks(self, units: int) -> int:
        """Asking tasks for a batch: enough cores for the client's CPU, never more than the
        units of work, and at most half the slots, so preparing and merging go on."""
        wanted = math.ceil(self.plan.client.concurrency / REQUESTS_PER_TASK)
        if wanted <= 1 or units <= 1:
            return 1
        return max(1, min(wanted, units, parallelism(self.spark) // 2))

    def ask(self, ask: Ask, stop: Stop) -> Future:
        """Runs the batch's asking jobs, one after another; returns their answers when the
        last is done. A job holds CHUNK_S seconds' worth of units (by the pace of the job
        before; ask.on_answers hears of each job's answers as it ends), so a crash of the
        driver or an executor costs at most one job's answers, whatever the batch size. The
        tasks cannot hear a stop: the job under way runs on (and is interrupted if it
        outlives the grace); no job starts after it, nor after a job whose requests were
        put off (the units left get no answer, and come back in a later batch)."""
        answers: list[dict[str, Any]] = []
        units = list(ask.paths)
        size = FIRST_CHUNK_PER_SLOT * self.plan.client.concurrency
        while units and not stop.requested:
            chunk, units = units[:size], units[size:]
            began = time.monotonic()
            rows = self._job(ask, chunk, whole=not answers and not units)
            if ask.on_answers is not None:
                ask.on_answers(rows)
            answers.extend(rows)
            if any(r["status"] == DEFERRED for r in rows):
                break  # credentials or the endpoint failed: the rest waits for the driver
            pace = len(chunk) / max(time.monotonic() - began, 1e-3)
            size = max(2 * self.plan.client.concurrency, round(pace * CHUNK_S))
        return completed(answers)

    def _job(self, ask: Ask, chunk: list[tuple[str, ...]], whole: bool) -> list[dict[str, Any]]:
        """One asking job over the members of `chunk` (all of them: `whole`)."""
        tasks = self.tasks(len(chunk))
        # Fresh headers for each job: the tasks cannot renew them (what could mint a token
        # never leaves the driver), so a job that outlives its token puts off its requests.
        client = replace(self.plan.client, credentials=self.source.current())
        plan = replace(self.plan, tasks=tasks, client=client)
        members = ask.members if whole else ask.members.filter(
            F.col("path").isin(sorted(p for unit in chunk for p in unit)))
        frame = arrange(replace(ask, members=members), tasks).mapInPandas(
            ask_in_tasks(plan), answer_schema(plan))
        self._idle.clear()
        try:
            return [r.asDict(recursive=True) for r in frame.collect()]
        finally:
            self._idle.set()

    def settle(self, deadline: float) -> None:
        """Wait, until `deadline` (time.monotonic), for the asking job to end."""
        self._idle.wait(max(0.0, deadline - time.monotonic()))

    def cancel(self) -> None:
        return None


class DriverCaller:
    kind = "driver"

    def __init__(self, spark: SparkSession, plan: CallPlan, source: CredentialSource) -> None:
        self.spark, self.plan, self.source = spark, replace(plan, tasks=1), source
        self.window_size = WINDOW_PER_SLOT * plan.client.concurrency
        self.breaker = Breaker()  # the run's one client's: the run pauses when it opens
        self._window = threading.Semaphore(self.window_size)
        self._outstanding: set[Future] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> DriverCaller:
        self._runner = LoopThread().__enter__()
        self._client = CaptionClient(self.plan.client, source=self.source, breaker=self.breaker)
        self._runner.submit(self._client.__aenter__()).result()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
        try:
            self._runner.submit(self._client.__aexit__(None, None, None)).result(timeout=10)
        finally:
            self._runner.__exit__(None, None, None)

    def ask(self, ask: Ask, stop: Stop) -> Future:
        """Hands the batch's images to the run's client as they stream in; returns once they
        are all handed over, with a future of the answers. On a stop, the images not yet
        handed over stay unasked, and the answers are those of what was."""
        futures: list[Future] = []
        try:
            for unit in self.plan.units(_members(
                    arrange(ask, None).toLocalIterator(prefetchPartitions=True), ask.by_group)):
                if stop.requested:
                    break
                futures.append(self._submit(unit, ask.on_answers))
        except Exception:
            if not stop.requested:  # a stream cut by the stop's interrupt is no failure
                raise
        return gathered(futures)

    def _submit(self, unit: list[Member],
                on_answers: Callable[[list[dict[str, Any]]], None] | None) -> Future:
        held = min(len(unit), self.window_size)  # a group larger than the window still goes
        for _ in range(held):
            self._window.acquire()
        future = self._runner.submit(self.plan.ask(self._client, unit))
        with self._lock:
            self._outstanding.add(future)

        def finished(done: Future) -> None:
            with self._lock:
                self._outstanding.discard(done)
            for _ in range(held):
                self._window.release()
            if on_answers is not None and not done.cancelled() and done.exception() is None:
                on_answers(done.result())

        future.add_done_callback(finished)
        return future

    def settle(self, deadline: float) -> None:
        """A stop: no request starts from now on; those sent may answer until `deadline`
        (time.monotonic); then whatever is left is cancelled."""
        self._runner.submit(self._client.limit.close()).result(timeout=10)
        with self._lock:
            outstanding = list(self._outstanding)
        wait(outstanding, timeout=max(0.0, deadline - time.monotonic()))
        self.cancel()

    def cancel(self) -> None:
        """Stop asking: the requests not yet answered are cancelled."""
        with self._lock:
            outstanding = list(self._outstanding)
        for future in outstanding:
            future.cancel()


def _members(rows: Iterable[Row], by_group: bool) -> Iterator[Member]:
    for r in rows:
        yield Member(r["path"], r["mime"], bytes(r["image"]), int(r["estimated_image_tokens"]),
                     r["group_key"] if by_group else None)


def gathered(futures: list[Future]) -> Future:
    """One future of all the answers, in order, once every request has finished. A request
    cancelled (by a stop) has no answer, and its images no row: a rerun asks them."""
    if not futures:
        return completed([])
    gathered: Future = Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if not last:
            return
        try:
            gathered.set_result([row for f in futures if not f.cancelled()
                                 for row in f.result()])
        except BaseException as exc:  # a request that raised
            gathered.set_exception(exc)

    for future in futures:
        future.add_done_callback(one_done)
    return gathered
