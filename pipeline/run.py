"""One caption run, batch by batch: list, skip what is done, prepare, call, MERGE.

Spark does all the heavy lifting on executors; the driver sees metadata (paths, counts),
never image bytes. Each stage of a batch is computed once, so no UDF runs twice and no
request is sent twice for one row: the prepared images are cached until the batch is merged
(`Held`); the answers, which read the captions table, are checkpointed, because a write to a
Delta table drops every cached plan that reads it, and recomputing them would call again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipeline import sink, source
from pipeline.auth import Credentials
from pipeline.client import ClientSettings
from pipeline.config import ConfigError, RunConfig
from pipeline.images import Rejected, check_length
from pipeline.limits import Catalog, ModelFamily, load_catalog
from pipeline.payloads import PromptSpec, image_byte_budget
from pipeline.progress import Update, terminal, update
from pipeline.resources import sql_text
from pipeline.spark import get_spark
from pipeline.udfs import CAPTIONED, PREPARED, CallPlan, caption_udf, outcome_row, prepare_udf

DONE_STATUSES = ("ok", "invalid")


@dataclass
class RunResult:
    run_id: str
    table: str
    listed: int = 0
    skipped: int = 0
    statuses: Counter = field(default_factory=Counter)
    error_classes: Counter = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    seconds: float = 0.0
    status: str = "running"

    @property
    def written(self) -> int:
        return sum(self.statuses.values())

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class RunContext:
    """What every batch needs, resolved once on the driver."""

    config: RunConfig
    catalog: Catalog
    family: ModelFamily
    spec: PromptSpec
    tables: sink.Tables | None  # None for a dry run over a table that does not exist yet
    run_id: str
    plan_client: ClientSettings | None = None  # None for a dry run: no requests

    @property
    def endpoint(self) -> str:
        return self.config.endpoint or ""

    @property
    def prompt_id(self) -> str:
        return self.spec.prompt_id

    @property
    def model(self) -> str | None:
        return None if "{endpoint}" in self.config.chat_path else self.endpoint

    @property
    def asked_here(self) -> Column:
        """Rows of a captions or groups table that answer this run's endpoint and prompt."""
        return (F.col("endpoint") == self.endpoint) & (F.col("prompt_id") == self.prompt_id)

    @property
    def image_budget(self) -> int:
        return image_byte_budget(
            self.spec, self.family.max_request_bytes, self.family.max_image_bytes, self.model
        )


class Held:
    """DataFrames of one batch, computed once and kept (in memory, spilling to disk) until the
    batch is merged, then released, so the image bytes of a batch do not outlive it."""

    def __init__(self) -> None:
        self._frames: list[DataFrame] = []

    def keep(self, df: DataFrame) -> DataFrame:
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        df.count()  # caching computes every column of every row, UDFs included, once
        self._frames.append(df)
        return df

    def release(self) -> None:
        for df in self._frames:
            df.unpersist()
        self._frames.clear()


def chat_url(config: RunConfig, host: str) -> str:
    return host.rstrip("/") + config.chat_path.replace("{endpoint}", config.endpoint or "")


def context(
    config: RunConfig,
    spark: SparkSession,
    credentials: Credentials | None = None,
    tables: sink.Tables | None = None,
) -> RunContext:
    catalog = load_catalog(config.models_file)
    client = None
    if credentials is not None:
        client = ClientSettings(
            url=chat_url(config, credentials.host),
            credentials=credentials,
            timeout_s=config.request_timeout,
            max_attempts=config.max_attempts,
            concurrency=config.max_concurrency,
            rpm=config.max_rpm,
        )
    family = catalog.family(config.endpoint or "", config.model_family)
    if config.images_per_request > family.max_images_per_request:
        raise ConfigError(
            f"images_per_request is {config.images_per_request}, but {family.name} endpoints "
            f"take at most {family.max_images_per_request} images per request (conf/models.yml)"
        )
    return RunContext(
        config=config,
        catalog=catalog,
        family=family,
        spec=config.prompt_spec(),
        tables=tables,
        run_id=uuid.uuid4().hex,
        plan_client=client,
    )


def run(
    config: RunConfig,
    credentials: Credentials,
    spark: SparkSession | None = None,
    progress: Callable[[Update | str], None] = terminal,
) -> RunResult:
    spark = spark or get_spark()
    ctx = context(config, spark, credentials, sink.resolve(spark, config.table))
    result = RunResult(ctx.run_id, ctx.tables.display)
    started = datetime.now(timezone.utc)
    _record(spark, ctx, result, started, None)
    try:
        if config.mode == "sql":
            from pipeline import sql_path

            sql_path.caption(spark, ctx, result, progress)
        elif config.group_by is not None:
            from pipeline import group_run

            group_run.caption(spark, ctx, result, progress)
        else:
            _run_batches(spark, ctx, result, progress)
        if not (config.mode == "sql" and config.group_by is not None):
            _summarize(spark, ctx, result)  # the SQL group path writes no captions rows
        if config.mode == "sql":  # one statement: what it did not write, it skipped
            result.skipped = result.listed - result.written
        result.status = "succeeded"
        _record(spark, ctx, result, started, None)
    except BaseException as exc:
        result.status = "failed"
        _record(spark, ctx, result, started, str(exc).splitlines()[0][:500] if str(exc) else
                type(exc).__name__)
        raise
    return result


def _run_batches(
    spark: SparkSession, ctx: RunContext, result: RunResult, progress: Callable[[Update], None]
) -> None:
    todo, pending, batches = plan_batches(spark, ctx, result)
    progress(update("planned", result, pending, batches))
    began = time.perf_counter()
    done = 0
    for number in range(batches):
        rows = todo.filter(F.col("batch") == number).collect()  # metadata only
        held = Held()
        try:
            batch = _process_batch(spark, ctx, rows, held)
            sink.merge_batch(spark, ctx.tables, batch)
            count_outcomes(batch, result)
        finally:
            held.release()
        done += len(rows)
        result.seconds = time.perf_counter() - began
        progress(update("batch", result, pending, batches, number + 1, files_done=done))


def count_outcomes(batch: DataFrame, result: RunResult) -> None:
    """Add a merged batch's statuses and error classes to the run's running totals."""
    for r in batch.groupBy("status", "error_class").count().collect():
        result.statuses[r["status"]] += r["count"]
        if r["error_class"]:
            result.error_classes[r["error_class"]] += r["count"]


def plan_batches(
    spark: SparkSession, ctx: RunContext, result: RunResult
) -> tuple[DataFrame, int, int]:
    """List the input, skip what is done; the files left, their count and the batch count."""
    listing = source.list_files(spark, ctx.config.input)
    result.listed = listing.count()
    if result.listed == 0:
        raise source.InputError(f"--input {ctx.config.input} holds no files")
    todo = _todo(spark, ctx, listing)
    pending = todo.count()
    result.skipped = result.listed - pending
    return todo, pending, -(-pending // ctx.config.max_files_per_batch)


def _todo(spark: SparkSession, ctx: RunContext, listing: DataFrame) -> DataFrame:
    """Files not yet done for this endpoint and prompt, numbered into batches by path."""
    todo = listing
    if ctx.tables is not None:
        done = (
            spark.table(ctx.tables.captions)
            .filter(
                ctx.asked_here & F.col("status").isin(*DONE_STATUSES)
            )
            .select("path", F.col("size_bytes").alias("length"),
                    F.col("modified_at").alias("modificationTime"))
        )
        todo = listing.join(done, ["path", "length", "modificationTime"], "left_anti")
    # Checkpointed, not cached: the numbering must not change when merges change the table.
    order = Window.orderBy("path")
    return todo.withColumn(
        "batch",
        F.floor((F.row_number().over(order) - 1) / ctx.config.max_files_per_batch),
    ).localCheckpoint(eager=True)


def _process_batch(spark: SparkSession, ctx: RunContext, rows: list, held: Held) -> DataFrame:
    prepared = prepare_batch(spark, ctx, rows, held)
    answers = _answers(spark, ctx, prepared)
    # Fixed, so the MERGE and the counts after it see the same rows.
    return rows_of(ctx, prepared, answers).localCheckpoint(eager=True)


def prepare_batch(
    spark: SparkSession,
    ctx: RunContext,
    rows: list,
    held: Held,
    refused: dict[str, Rejected] | None = None,
) -> DataFrame:
    """Prepared (or refused) images of one batch, computed once. `refused` holds files already
    judged invalid by path; like files refused by length, their bytes are never read."""
    bounds = ctx.catalog.input
    gated, readable = [], []
    for r in rows:
        rejected = (refused or {}).get(r["path"]) or check_length(r["length"], bounds)
        if rejected:
            gated.append((r["path"], r["length"], r["modificationTime"], rejected))
        else:
            readable.append(r["path"])
    prepared = _gated_frame(spark, ctx, gated)
    if readable:
        contents = source.read_contents(spark, readable)
        udf = prepare_udf(ctx.family, bounds, ctx.image_budget)
        read = contents.select(*source.METADATA, udf("content").alias("p")).select(
            *source.METADATA, "p.*"
        )
        prepared = prepared.unionByName(read)
    return held.keep(prepared)


def _gated_frame(spark: SparkSession, ctx: RunContext, gated: list) -> DataFrame:
    """Rows for files refused on their length alone: their bytes are never read."""
    schema = "path STRING, length BIGINT, modificationTime TIMESTAMP, " + ", ".join(
        f"{f.name} {f.dataType.simpleString()}" for f in PREPARED.fields
    )
    data = [
        (path, length, mtime, *outcome_row(rejected, ctx.family, None).values())
        for path, length, mtime, rejected in gated
    ]
    return spark.createDataFrame(data, schema)


def _answers(spark: SparkSession, ctx: RunContext, prepared: DataFrame) -> DataFrame:
    """One answer per distinct content: reused from the table, or asked of the endpoint."""
    valid = prepared.filter(F.col("error_class").isNull())
    first = Window.partitionBy("content_sha256").orderBy("path")
    distinct = (
        valid.withColumn("rank", F.row_number().over(first))
        .filter(F.col("rank") == 1)
        .select("content_sha256", F.col("path").alias("answer_path"), "image", "mime",
                "estimated_image_tokens")
    )
    known = (
        spark.table(ctx.tables.captions)
        .filter(
            ctx.asked_here
            & (F.col("status") == "ok")
            & F.col("reused_from").isNull()
        )
        .join(distinct.select("content_sha256"), "content_sha256", "left_semi")
        .withColumn("rank", F.row_number().over(first))
        .filter(F.col("rank") == 1)
        .select(
            "content_sha256",
            F.col("path").alias("answer_path"),
            *[
                # A reused answer cost no request now.
                (F.lit(0) if c in ("attempts", "throttled", "request_share") else F.col(c))
                .cast(CAPTIONED[c].dataType)
                .alias(c)
                for c in CAPTIONED.names
            ],
        )
    )
    to_call = distinct.join(known.select("content_sha256"), "content_sha256", "left_anti")
    count = to_call.count()
    if count == 0:
        return known.localCheckpoint(eager=True)
    tasks = caption_tasks(spark, ctx, count)
    plan = CallPlan(ctx.plan_client, ctx.spec, ctx.model, tasks,
                    ctx.config.images_per_request, ctx.family.max_request_bytes)
    called = (
        to_call.repartition(tasks)
        .select(
            "content_sha256",
            "answer_path",
            caption_udf(plan)("image", "mime", "estimated_image_tokens").alias("c"),
        )
        .select("content_sha256", "answer_path", "c.*")
    )
    return called.unionByName(known).localCheckpoint(eager=True)


def caption_tasks(spark: SparkSession, ctx: RunContext, work: int) -> int:
    """Spark tasks that call the endpoint: all run at once (one per core), never more than the
    request budget or the units of work (images or groups) to share it."""
    return max(1, min(spark.sparkContext.defaultParallelism, ctx.config.max_concurrency, work))


def rows_of(
    ctx: RunContext, prepared: DataFrame, answers: DataFrame, by_path: bool = False
) -> DataFrame:
    """The captions-table rows of one batch, one per file. Answers are found by content (one
    answer per distinct image) or, `by_path`, each file's own (members of groups)."""
    p, a = prepared.alias("p"), answers.alias("a")
    on = "answer_path" if by_path else "content_sha256"
    joined = p.join(a, F.col(f"p.{'path' if by_path else on}") == F.col(f"a.{on}"), "left")
    invalid = F.col("p.error_class").isNotNull()
    own = F.col("a.answer_path") == F.col("p.path")
    reused = (~invalid) & (~own)

    def answer(column: str):
        return F.when(invalid, F.lit(None)).otherwise(F.col(f"a.{column}"))

    return joined.select(
        F.col("p.path").alias("path"),
        F.col("p.content_sha256").alias("content_sha256"),
        F.col("p.length").alias("size_bytes"),
        F.col("p.modificationTime").alias("modified_at"),
        *[F.col(f"p.{c}").alias(c) for c in
          ("format", "width", "height", "sent_width", "sent_height", "sent_bytes")],
        F.lit(ctx.endpoint).alias("endpoint"),
        F.lit(ctx.prompt_id).alias("prompt_id"),
        F.when(invalid, F.lit("invalid")).otherwise(F.col("a.status")).alias("status"),
        F.coalesce(F.col("p.error_class"), F.col("a.error_class")).alias("error_class"),
        F.coalesce(F.col("p.error_message"), F.col("a.error_message")).alias("error_message"),
        *[answer(c).alias(c) for c in ("caption", "response_json", "prompt_tokens",
                                       "completion_tokens", "total_tokens", "usage_source")],
        F.col("p.estimated_image_tokens").alias("estimated_image_tokens"),
        F.when(invalid | reused, F.lit(0)).otherwise(F.col("a.attempts")).alias("attempts"),
        F.when(invalid | reused, F.lit(0.0)).otherwise(F.col("a.request_share"))
        .alias("request_share"),
        answer("latency_ms").alias("latency_ms"),
        F.lit(ctx.run_id).alias("run_id"),
        F.current_timestamp().alias("processed_at"),
        F.when(reused, F.col("a.answer_path")).alias("reused_from"),
        (F.col("p.group_key") if "group_key" in prepared.columns else F.lit(None))
        .cast("string").alias("group_key"),
    )


def _summarize(spark: SparkSession, ctx: RunContext, result: RunResult) -> None:
    """Run totals from the rows this run wrote (sql/summarize_run.sql)."""
    rows = spark.sql(
        sql_text("summarize_run.sql"), args={"table": ctx.tables.captions, "run_id": ctx.run_id}
    ).collect()
    groups = [r for r in rows if not r["is_total"]]
    result.statuses = Counter()
    result.error_classes = Counter()
    for r in groups:
        result.statuses[r["status"]] += r["files"]
        if r["error_class"]:
            result.error_classes[r["error_class"]] += r["files"]
    total = next((r for r in rows if r["is_total"]), None)
    if total is None or not total["files"]:
        return
    result.requests, result.retries = int(total["requests"]), int(total["retries"])
    result.prompt_tokens = int(total["prompt_tokens"])
    result.completion_tokens = int(total["completion_tokens"])
    result.total_tokens = int(total["total_tokens"])
    if total["latency_p50_ms"] is not None:
        result.latency_p50_ms = float(total["latency_p50_ms"])
        result.latency_p95_ms = float(total["latency_p95_ms"])


def _record(
    spark: SparkSession,
    ctx: RunContext,
    result: RunResult,
    started: datetime,
    error: str | None,
) -> None:
    sink.upsert_run(
        spark,
        ctx.tables,
        {
            "run_id": ctx.run_id,
            "started_at": started,
            "ended_at": None if result.status == "running" else datetime.now(timezone.utc),
            "status": result.status,
            "mode": ctx.config.mode,
            "endpoint": ctx.endpoint,
            "prompt_id": ctx.prompt_id,
            "listed": result.listed,
            "skipped": result.skipped,
            "ok": result.statuses["ok"],
            "invalid": result.statuses["invalid"],
            "failed": result.statuses["failed"],
            "requests": result.requests,
            "retries": result.retries,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens,
            "images_per_s": result.images_per_s,
            "latency_p50_ms": result.latency_p50_ms,
            "latency_p95_ms": result.latency_p95_ms,
            "error_message": error,
            "config_json": json.dumps(ctx.config.public(), sort_keys=True, default=str),
        },
    )
