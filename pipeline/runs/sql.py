"""`--mode sql`: the templates in sql/ do the work, with ai_query, in one MERGE statement.

The same template text a SQL notebook or SQL task runs; this module only binds its named
parameters from the run's configuration and, off Databricks, registers the local stand-ins
for `read_files` and `ai_query` (pipeline/local/sql_functions.py).

`ai_query` stores a structured answer as the endpoint gave it; it does not say how an answer
ended (no finish_reason) and checks no schema. So right after the template, the answers this
run wrote `ok` are checked as the UDF path checks them (`answer_check`, the same
pipeline/endpoint/payloads.py and schemas.py, in a Spark UDF), and those that fail become
failed rows (sql/fail_answers.sql): `schema_mismatch` with the validator's message, or
`bad_response` for an answer that is no JSON (a cut-off one is such an answer). The
bundle's SQL job runs the same check as a Python task after its caption task
(jobs/check_answers.py): a SQL warehouse runs no Python.

With `--group-by` the template is sql/caption_groups.sql: one answer per group into
`<table>_groups` and no rows in the captions table, so the run's totals come from the groups
it wrote (`summarize_groups`): each file of a group counts under its group's status.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.endpoint.packing import request_room
from pipeline.endpoint.payloads import BadResponse, SchemaMismatch, structured_text
from pipeline.endpoint.prompt_ids import group_pattern
from pipeline.errors import RunError
from pipeline.files.source import InputError, Listing
from pipeline.images.prepare import target_size
from pipeline.local import sql_functions
from pipeline.outcomes import ErrorClass
from pipeline.progress import by_class
from pipeline.resources import sql_text
from pipeline.runs.context import RunContext, RunResult
from pipeline.spark import on_databricks
from pipeline.tables import sink

TEMPLATE = "caption_files.sql"
GROUP_TEMPLATE = "caption_groups.sql"


# Databricks offers ai_query on serverless compute and SQL warehouses, not on classic
# clusters: there the statement cannot resolve it.
NO_AI_QUERY = ("ai_query is not available on this compute (Databricks offers it on serverless "
               "compute and SQL warehouses): run with --mode udf here, or on one of those")


class SqlPathError(RunError):
    """The SQL path cannot run on this compute; one line for the user."""


def _common(ctx: RunContext) -> dict[str, Any]:
    """The markers both templates share."""
    spec, family = ctx.spec, ctx.family
    # SQL cannot measure an image: estimate at the family's recommended size (an upper bound).
    recommended = target_size(100_000, 100_000, family)
    return {
        "input_path": ctx.config.input,
        "endpoint": ctx.endpoint,
        "prompt": spec.prompt,
        "run_id": ctx.run_id,
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "formats": ",".join(family.formats),
        "max_bytes": ctx.image_budget,
        "max_file_bytes": ctx.catalog.input.max_file_bytes,
        "image_tokens": family.image_tokens(*recommended),
    }


def parameters(ctx: RunContext) -> dict[str, Any]:
    """Values for every marker of sql/caption_files.sql; bound, never formatted into text."""
    assert ctx.tables is not None, "a dry run runs no SQL"
    spec = ctx.spec
    # The template hashes it in Spark's canonical form, as PromptSpec.prompt_id does.
    response_format = None if spec.response_format is None else json.dumps(spec.response_format)
    return {
        "table": ctx.tables.captions,
        **_common(ctx),
        "response_format": response_format,
        "caption_field": spec.caption_field,
    }


def group_parameters(ctx: RunContext) -> dict[str, Any]:
    """Values for every marker of sql/caption_groups.sql. A --group-by regex is bound as it
    is: Java's regex dialect runs it, so it should keep to what Python's re reads alike."""
    assert ctx.tables is not None, "a dry run runs no SQL"
    rule = ctx.config.group_by
    assert rule is not None, "a grouped run"
    return {
        "groups_table": ctx.tables.groups,
        **_common(ctx),
        "group_pattern": group_pattern(rule),
        "max_images": ctx.family.max_images_per_request,
        **dict(zip(("room_bytes", "per_image_bytes"),
                   request_room(ctx.spec, ctx.family.max_request_bytes, ctx.model),
                   strict=True)),
    }


def caption(
    spark: SparkSession, ctx: RunContext, listing: Listing, result: RunResult,
    progress: Callable[[str], None]
) -> None:
    """One statement: list, refuse, ask and MERGE, all in the template; then the totals from
    what it wrote (it says nothing of what it skipped, so the rest of the listing was)."""
    assert ctx.tables is not None and ctx.client is not None
    result.listed = listing.files.count()
    if result.listed == 0:
        raise InputError(f"--input {ctx.config.input} holds no files")
    if not on_databricks():
        sql_functions.register(spark, ctx.client.credentials, ctx.config)
    grouped = ctx.config.group_by is not None
    if grouped:
        sink.ensure_groups(spark, ctx.tables)
    template, args = (GROUP_TEMPLATE, group_parameters(ctx)) if grouped else (
        TEMPLATE, parameters(ctx))
    by = f", --group-by {ctx.config.group_by}" if grouped else ""
    progress(f"{result.listed} files listed; captioning with ai_query ({template}{by})")
    began = result.tick()
    try:
        spark.sql(sql_text(template), args=args)
    except Exception as exc:
        if "ai_query" in str(exc) and "UNRESOLVED_ROUTINE" in str(exc):
            raise SqlPathError(NO_AI_QUERY) from None
        raise
    result.timeline.append((1, "statement", began, result.tick()))
    if not grouped and ctx.spec.response_schema is not None:
        progress("checking the structured answers against --response-schema")
        checked = fail_unusable(spark, ctx.tables.captions, ctx.run_id, ctx.endpoint,
                                ctx.spec.response_schema, ctx.spec.caption_field)
        progress(checked.line())
    if grouped:
        summarize_groups(spark, ctx, result)
    else:
        summarize(spark, ctx, result)
    result.skipped = result.listed - result.written


# What a structured answer that is no JSON gets added on this path, where nothing says why.
NO_FINISH_REASON = (" ai_query does not say how an answer ended: if it was cut off at "
                    "max_tokens, raise --max-tokens and run again.")


def answer_check(text: str | None, schema: dict[str, Any],
                 caption_field: str) -> tuple[str, str] | None:
    """(error class, message) for a structured answer `ai_query` stored that the UDF path
    would not have kept, or None when it would."""
    if text is None:
        return None
    try:
        structured_text(text, schema, caption_field)
    except SchemaMismatch as exc:
        return ErrorClass.SCHEMA_MISMATCH.value, str(exc)
    except BadResponse as exc:
        return ErrorClass.BAD_RESPONSE.value, f"{exc}{NO_FINISH_REASON}"
    return None


@dataclass(frozen=True)
class Checked:
    """What `fail_unusable` did to one run's rows."""

    answers: int  # the `ok` rows it checked
    failed: Counter[str]  # of those, the ones it failed, by error class

    def line(self) -> str:
        if not self.failed:
            return f"checked {self.answers} structured answers: all fit the response schema"
        return (f"checked {self.answers} structured answers: {self.failed.total()} failed "
                f"({by_class(self.failed)})")


def fail_unusable(spark: SparkSession, table: str, run_id: str, endpoint: str,
                  schema: dict[str, Any], caption_field: str) -> Checked:
    """Check the structured answers one run wrote `ok` into `table` (a name IDENTIFIER
    takes) for `endpoint`, in a Spark UDF where the rows are, and fail those `answer_check`
    refuses (sql/fail_answers.sql). The run id selects the rows; each keeps its own prompt
    id. `vision-batch run --mode sql` and jobs/check_answers.py (the SQL job) both call this.

    The counts are the run's rows by status and class before and after the MERGE: two
    aggregates that run no UDF, where counting the failures themselves would check every
    answer twice."""

    @F.udf("struct<error_class:string,error_message:string>")
    def check(text: str | None) -> tuple[str, str] | None:
        return answer_check(text, schema, caption_field)

    def tally() -> Counter[tuple[str, str | None]]:
        return Counter({(r["status"], r["error_class"]): r["rows"] for r in
                        run_rows.groupBy("status", "error_class")
                        .agg(F.count(F.lit(1)).alias("rows")).collect()})

    run_rows = spark.table(table).filter(
        (F.col("run_id") == run_id) & (F.col("endpoint") == endpoint))
    before = tally()
    checked = (run_rows.filter(F.col("status") == "ok")
               .select("path", "prompt_id", check("response_json").alias("problem"))
               .filter(F.col("problem").isNotNull())
               .select("path", "prompt_id", "problem.error_class", "problem.error_message"))
    # A run id is any text (the SQL job's is a number): only word characters in a view name.
    view = "vision_batch_checked_" + re.sub(r"\W", "_", run_id)
    checked.createOrReplaceTempView(view)
    try:
        spark.sql(sql_text("fail_answers.sql"),
                  args={"table": table, "checked": view, "endpoint": endpoint, "run_id": run_id})
    finally:
        spark.catalog.dropTempView(view)
    failed = Counter({cls: n - before[("failed", cls)] for (status, cls), n in tally().items()
                      if status == "failed" and cls is not None})
    return Checked(before[("ok", None)], +failed)


def summarize(spark: SparkSession, ctx: RunContext, result: RunResult) -> None:
    """Run totals from the rows this run wrote (sql/summarize_run.sql)."""
    assert ctx.tables is not None
    rows = spark.sql(
        sql_text("summarize_run.sql"), args={"table": ctx.tables.captions, "run_id": ctx.run_id}
    ).collect()
    result.statuses, result.error_classes = Counter(), Counter()
    for r in rows:
        if r["is_total"]:
            continue
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


def summarize_groups(spark: SparkSession, ctx: RunContext, result: RunResult) -> None:
    """Run totals from the groups this run wrote: files counted by their group's status,
    requests as the parts asked (ai_query does not report retries or latency)."""
    assert ctx.tables is not None
    rows = (
        spark.table(ctx.tables.groups)
        .filter(F.col("run_id") == ctx.run_id)
        .select("status", "error_class", F.size("member_paths").alias("files"), "attempts",
                "prompt_tokens", "completion_tokens", "total_tokens")
        .collect()
    )
    result.statuses, result.error_classes = Counter(), Counter()
    for r in rows:
        result.statuses[r["status"]] += r["files"]
        if r["error_class"]:
            result.error_classes[r["error_class"]] += r["files"]
    result.requests = sum(r["attempts"] or 0 for r in rows)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        setattr(result, name, sum(r[name] or 0 for r in rows))
