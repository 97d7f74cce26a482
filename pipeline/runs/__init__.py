"""One caption run: list, skip what is done, then batches through the shared loop, or the SQL
path's one statement; a row in the runs table at the end.

    runs/context.py   the settings every part needs, and the run's totals
    runs/plan.py      listing -> files left -> a stream of batches (single files or groups)
    runs/prepare.py   the prepare stage: read and prepare a batch on the executors
    runs/callers.py   where requests are sent from: the executors or the driver
    runs/claims.py    overlapping runs share the work: each asks the units it claimed
    runs/loop.py      claim ▸ prepare ▸ ask ▸ commit, overlapped across batches
    runs/single.py    the path of single images (alone or packed)
    runs/grouped.py   the path of groups (--group-by)
    runs/rows.py      the captions-table rows a batch writes
    runs/sql.py       --mode sql: the templates in sql/, one statement

Imports go one way: this module uses the others; the paths use plan, prepare, rows and
callers; nothing imports back.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from pyspark.sql import SparkSession

from pipeline.config import RunConfig
from pipeline.endpoint.auth import CredentialSource
from pipeline.endpoint.pacing import NAMES
from pipeline.errors import VisionBatchError, first_line
from pipeline.files import source
from pipeline.interrupts import Interrupted, Stop, only_mark, quietly
from pipeline.outcomes import RunStatus, Status
from pipeline.progress import Update, terminal, update
from pipeline.runs import journal, loop, sql
from pipeline.runs.callers import DriverCaller, ExecutorCaller
from pipeline.runs.claims import Claims
from pipeline.runs.context import RunContext, RunResult, context
from pipeline.runs.grouped import Grouped
from pipeline.runs.plan import Entry, sampling, still_to_do
from pipeline.runs.recovery import Recovery
from pipeline.runs.single import Singles
from pipeline.spark import get_spark
from pipeline.tables import sink

__all__ = ["RunContext", "RunResult", "context", "run"]


def run(
    config: RunConfig,
    credentials: CredentialSource,
    spark: SparkSession | None = None,
    progress: Callable[[Update | str], None] = terminal,
    started: float | None = None,
    stop: Stop | None = None,
) -> RunResult:
    """Caption `config.input` into `config.table`. `started` is when the command began
    (epoch seconds): every duration the run reports counts from there. A `stop` (thrown by
    Ctrl-C or SIGTERM, pipeline/interrupts.py) ends the run early, in good order: it is
    recorded as `interrupted` and Interrupted is raised, carrying the result."""
    started = time.time() if started is None else started
    stop = stop or Stop()
    ctx = context(config, credentials)  # settings errors come before Spark starts
    before_spark = time.time()
    # A signal must not raise inside PySpark's launch of the JVM: PySpark would delete the
    # file the JVM reports to, and the JVM, half started, would outlive this process. So a
    # stop while Spark starts waits for it to be up (seconds), then ends the run.
    stop.halting_with(only_mark)
    spark = spark or get_spark(kind=config.spark)
    spark_seconds = time.time() - before_spark
    if stop.installed:
        stop.install()  # again: a classic SparkContext has just put in its own SIGINT handler
    if stop.requested:
        raise Interrupted(stop.signum or signal.SIGINT)
    stop.halting_with(None)  # until there is work to halt, a signal raises at once
    result = RunResult(ctx.run_id, sink.named(config.table).display, ctx.prompt_id,
                       started=started, spark_seconds=spark_seconds,
                       max_tokens=ctx.spec.max_tokens)
    result.timeline.append((0, "spark", before_spark - started, result.tick()))
    # The tables and the listing do not depend on each other, and each pays a first-use cost
    # in a fresh JVM (Delta's classes; the scan): side by side.
    pool = ThreadPoolExecutor(2, thread_name_prefix="vision-batch-start")
    made = pool.submit(_timed, "tables", result, _tables, spark, config.table, config.mode)
    listed = pool.submit(_timed, "listing", result, source.list_files, spark, config.input or "")
    pool.shutdown(wait=False)
    planned_against = _planned_against(spark, config, made)
    ctx = replace(ctx, tables=planned_against)
    recorder = Recorder(spark, ctx, result, made)
    if planned_against.created and config.mode == "udf":
        recorder.start()  # a table made just now holds nothing: there is work, say so early
    # Until the batch loop takes over, a stop interrupts what Spark is doing: nothing has
    # been asked, so nothing is lost. The tables are left to be made, for the run's row.
    stop.halting_with(lambda: (made.exception(), spark.interruptAll()))
    try:
        listing = listed.result()
        if listing.note:
            progress(listing.note)
        if config.mode == "sql":
            recorder.start().result()
            sql.caption(spark, ctx, listing, result, progress)
        else:
            _batches(spark, ctx, listing, result, progress, recorder, stop, made)
        if stop.requested:
            raise Interrupted(stop.signum or signal.SIGINT)
        result.status = RunStatus.SUCCEEDED
    except BaseException as exc:
        stopped = stop.requested or isinstance(exc, KeyboardInterrupt)
        result.status = RunStatus.INTERRUPTED if stopped else RunStatus.FAILED
        result.exit_code = (128 + (stop.signum or signal.SIGINT) if stopped
                            else exc.exit_code if isinstance(exc, VisionBatchError) else 1)
        message = (f"interrupted by {_signal_name(stop.signum)}" if stopped
                   else first_line(exc)[:500] or type(exc).__name__)
        stop.halting_with(only_mark)  # the run's row is being written: let it be
        stop.wait_halted()
        try:
            recorder.finish(message)
        except Exception:  # the run's own failure is the one to report
            pass
        if stopped:
            raise Interrupted(stop.signum or signal.SIGINT, result) from None
        raise
    stop.halting_with(only_mark)  # done: a signal now leaves the run's last row be
    result.exit_code = result.exit_code_for(config.max_failed_share)
    recorder.finish(None)
    return result


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum or signal.SIGINT).name


def _timed(stage: str, result: RunResult, action, *args):
    """`action(*args)`, with its span on the run's timeline as `stage`."""
    began = result.tick()
    done = action(*args)
    result.timeline.append((0, stage, began, result.tick()))
    return done


def _tables(spark: SparkSession, table: str, mode: str) -> sink.Tables:
    tables = sink.resolve(spark, table)
    sink.ensure_runs(spark, tables)
    if mode == "udf":  # (one ai_query statement journals nothing)
        # What runs that died were answered is in the tables before anything is planned.
        journaled = sink.present(spark, tables, "_journal")
        sink.ensure_journal(spark, tables)
        if journaled:
            journal.fold(spark, tables)
    return tables


# Writes that go on beside the run (the claims table; the runs-table row that says it started).
_background = ThreadPoolExecutor(2, thread_name_prefix="vision-batch-record")


def _claims_table(spark: SparkSession, made: Future[sink.Tables],
                  journaled: journal.Journal) -> sink.Tables:
    """The claims table, made or checked (a foreign table there stops the run before any
    request); the journal (made with the other tables) is written from now on."""
    tables = made.result()
    journaled.open(tables)
    sink.ensure_claims(spark, tables)
    return tables


def _planned_against(spark: SparkSession, config: RunConfig,
                     made: Future[sink.Tables]) -> sink.Tables:
    """The tables the plan reads. Tables that are not there yet hold nothing to plan
    against, so planning single images need not wait while they are created (a fresh
    JVM's first Delta statement takes seconds): the names are enough, and nothing is written
    before the runs-table row, which waits for the tables. Everything else waits for them."""
    tables = sink.named(config.table)
    if config.mode == "udf" and config.group_by is None and sink.fresh(spark, tables):
        return replace(tables, created=True)
    return made.result()


def _batches(spark: SparkSession, ctx: RunContext, listing: source.Listing, result: RunResult,
             progress: Callable[[Update | str], None], recorder: Recorder, stop: Stop,
             made: Future[sink.Tables]) -> None:
    path = Grouped(spark, ctx) if ctx.config.group_by is not None else Singles(spark, ctx)
    began = result.tick()
    plan = path.plan(listing)
    result.listed, result.skipped = plan.listed, plan.skipped
    result.timeline.append((0, "plan", began, result.tick()))
    detail = (f", {plan.groups} group(s) by {ctx.config.group_by!r}"
              if plan.groups is not None else "") + sampling(ctx.config)
    progress(update("planned", result, plan.pending, plan.batches, detail=detail,
                    approximate=plan.approximate))
    if not plan.pending or stop.requested:
        return
    started = recorder.start()
    # The claims table (runs/claims.py), beside the first batch's preparation; the first
    # claim waits for it, so a foreign table there is refused before any request is sent.
    # The journal (runs/journal.py) is written from then on.
    journaled = journal.Journal(spark, ctx.run_id)
    claimable = _background.submit(_timed, "claims table", result, _claims_table, spark, made,
                                   journaled)

    def left_to_do(entries: list[Entry]) -> list[Entry]:
        """Of units first claimed by runs now gone, those the tables hold no answer for,
        once what those runs journaled is folded in."""
        journal.fold(spark, claimable.result(), me=ctx.run_id)
        return still_to_do(spark, ctx, entries, path.by_group)

    claims = Claims(spark, ctx, claimable, stop=stop, still_to_do=left_to_do)
    kept = False
    try:
        with caller_for(spark, ctx, path.by_group) as caller:
            recovery = _recovery(ctx, caller, progress, stop)
            try:
                loop.drive(path, plan, caller, result, progress, before_writing=started,
                           stop=stop, interrupt=spark.interruptAll, claims=claims,
                           recovery=recovery, batch_size=ctx.config.max_files_per_batch,
                           journal=journaled)
                kept = True  # every answer is committed (a stop's too)
            finally:
                result.recovered(recovery)
    finally:
        # Beside the run's last row: the lease ends; the journal goes, or, if the run
        # failed, keeps every answer it holds for the next run to fold in.
        recorder.beside(claims.close)
        recorder.beside(lambda: journaled.close(kept=kept))
    for line in claims.said():
        progress(line)


def _recovery(ctx: RunContext, caller: ExecutorCaller | DriverCaller,
              progress: Callable[[Update | str], None], stop: Stop) -> Recovery:
    assert ctx.client is not None and ctx.credentials is not None  # a run that asks
    return Recovery(ctx.credentials, ctx.client.url, ctx.model,
                    ctx.config.max_outage_seconds, progress, stop,
                    timeout_s=ctx.client.timeout_s, breaker=caller.breaker)


def caller_for(spark: SparkSession, ctx: RunContext,
               by_group: bool) -> ExecutorCaller | DriverCaller:
    """The caller `--caller` names; `auto` is the driver, on every kind of compute. There a
    lost executor costs no request (it held prepared images, which Spark prepares again),
    where an asking task lost with its executor is asked again whole and its answers are
    lost (measured on a standalone cluster: 140-160 answers paid for 120 files); serverless
    UDFs cannot reach the network at all; and one driver's client drives hundreds of
    requests a second (about 2 ms of CPU each), more than most endpoints admit. The
    executors are for the rare endpoint that admits more (docs/compute.md, "Callers")."""
    plan = ctx.call_plan(ctx.family.max_images_per_request if by_group else 0)
    kind = "driver" if ctx.config.caller == "auto" else ctx.config.caller
    assert ctx.credentials is not None  # a run that asks has them
    caller = DriverCaller if kind == "driver" else ExecutorCaller
    return caller(spark, plan, ctx.credentials)





class Recorder:
    """The run's row in the runs table: `running` once there is work (so a killed run stays
    visible as one that never finished), then its totals. A run with nothing to do writes
    one row, at the end."""

    def __init__(self, spark: SparkSession, ctx: RunContext, result: RunResult,
                 made: Future[sink.Tables]) -> None:
        self.spark, self.ctx, self.result = spark, ctx, result
        self._made = made  # the tables, created if need be: every write waits for them
        self._started: Future | None = None
        self._beside: list[threading.Thread] = []

    def start(self) -> Future:
        """Append the `running` row in the background, beside planning and the first batch;
        the loop writes no row before it is there. It does not hold up the first request:
        in a fresh JVM, the first Delta write takes seconds. An append, not a MERGE: a new
        run_id conflicts with nothing. Once only."""
        if self._started is None:
            row = self._row(None)
            self._started = _background.submit(
                lambda: sink.insert_run(self.spark, self._made.result(), row))
        return self._started

    def beside(self, action: Callable[[], object]) -> None:
        """Do `action` in the background, beside the run's last row; `finish` waits for it.
        It is housekeeping: if it fails, the run's outcome stands."""
        thread = threading.Thread(target=quietly, args=(action,), name="vision-batch-beside")
        thread.start()
        self._beside.append(thread)

    def finish(self, error: str | None) -> None:
        try:
            self._finish(error)
        finally:
            for thread in self._beside:
                thread.join()

    def _finish(self, error: str | None) -> None:
        self.result.tick()
        self.result.settle_latency()
        row = self._row(error)
        tables = self._made.result()
        if self._started is None:
            sink.insert_run(self.spark, tables, row)
            return
        self._started.exception()  # wait for it; it may have failed (a stop interrupted it)
        sink.upsert_run(self.spark, tables, row)  # a MERGE: with or without the running row

    def _row(self, error: str | None) -> dict:
        r, ctx = self.result, self.ctx
        ended = None if r.status == RunStatus.RUNNING else r.started + r.seconds
        return {
            "run_id": ctx.run_id,
            "started_at": round(r.started * 1e6),
            "ended_at": None if ended is None else round(ended * 1e6),
            "status": r.status,
            "mode": ctx.config.mode,
            "endpoint": ctx.endpoint,
            "prompt_id": ctx.prompt_id,
            "listed": r.listed,
            "skipped": r.skipped,
            **{status.value: r.statuses[status] for status in Status},
            "requests": r.requests,
            "retries": r.retries,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.total_tokens,
            "images_per_s": r.images_per_s,
            "latency_p50_ms": r.latency_p50_ms,
            "latency_p95_ms": r.latency_p95_ms,
            **{f"waited_{name}_s": round(r.waited.get(name, 0.0), 1) for name in NAMES},
            "lost_task_requests": r.lost_requests,
            "outage_s": round(r.outage_s, 1),
            "put_off": r.put_off,
            "cut_off": r.cut_off,
            "exit_code": r.exit_code,
            "error_message": error,
            "config_json": json.dumps(ctx.config.public(), sort_keys=True, default=str),
        }
