"""`--group-by`: caption groups of files that belong together, batch by batch.

The flow of run.py with groups as the unit of work: list, key each file, skip groups whose
members are unchanged since an answer was recorded (a fingerprint of their paths, sizes and
modification times), prepare the members of a batch of groups, ask one request per group
(or per part, past the model's limits), then MERGE each member's row into the captions table
and each group's answer into `<table>_groups`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from pipeline import groups, sink, source
from pipeline.images import Rejected
from pipeline.progress import STATUSES, Update, update
from pipeline.run import (
    DONE_STATUSES,
    Held,
    RunContext,
    RunResult,
    caption_tasks,
    count_outcomes,
    prepare_batch,
    rows_of,
)
from pipeline.udfs import CAPTIONED, GROUP_PART, CallPlan, group_udf

MEMBER_ANSWER = StructType([StructField("answer_path", StringType()), *CAPTIONED.fields])


def caption(
    spark: SparkSession, ctx: RunContext, result: RunResult, progress: Callable[[Update], None]
) -> None:
    sink.ensure_groups(spark, ctx.tables)
    todo, batches, group_count = _plan(spark, ctx, result)
    pending = result.listed - result.skipped
    progress(update("planned", result, pending, batches,
                    detail=f", {group_count} group(s) by {ctx.config.group_by!r}"))
    began = time.perf_counter()
    done, groups_done = 0, Counter()
    for number in range(batches):
        rows = todo.filter(F.col("batch") == number).collect()  # metadata only
        held = Held()
        try:
            members, answered = _process(spark, ctx, rows, held)
            sink.merge_batch(spark, ctx.tables, members)
            sink.merge_groups(spark, ctx.tables, answered)
            count_outcomes(members, result)
            groups_done.update(r["status"] for r in answered.select("status").collect())
        finally:
            held.release()
        done += len(rows)
        result.seconds = time.perf_counter() - began
        detail = "; groups " + ", ".join(f"{groups_done[s]} {s}" for s in STATUSES)
        progress(update("batch", result, pending, batches, number + 1, detail, done))


def _plan(
    spark: SparkSession, ctx: RunContext, result: RunResult
) -> tuple[DataFrame, int, int]:
    """Files of the groups still to ask, numbered into batches of whole groups, with the
    files no group takes; their batch count and the number of groups."""
    rule = ctx.config.group_by
    listing = source.list_files(spark, ctx.config.input)
    result.listed = listing.count()
    if result.listed == 0:
        raise source.InputError(f"--input {ctx.config.input} holds no files")
    key_of = F.udf(lambda path: groups.group_key(path, rule), StringType())
    keyed = listing.withColumn("group_key", key_of("path"))
    stamp = F.concat_ws("|", "path", F.col("length").cast("string"),
                        F.col("modificationTime").cast("long").cast("string"))
    fingerprints = (
        keyed.filter(F.col("group_key").isNotNull())
        .groupBy("group_key")
        .agg(F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list(stamp))), 256)
             .alias("fingerprint"), F.count("*").alias("files"))
    )
    done = spark.table(ctx.tables.groups).filter(
        ctx.asked_here & F.col("status").isin(*DONE_STATUSES)
    ).select("group_key", "fingerprint")
    todo_groups = fingerprints.join(done, ["group_key", "fingerprint"], "left_anti")
    # Whole groups per batch: a batch closes once it holds max_files_per_batch files.
    order = Window.orderBy("group_key").rowsBetween(Window.unboundedPreceding, 0)
    todo_groups = todo_groups.withColumn(
        "batch",
        F.floor((F.sum("files").over(order) - F.col("files")) / ctx.config.max_files_per_batch),
    )
    in_groups = keyed.join(todo_groups.select("group_key", "fingerprint", "batch"),
                           "group_key")
    recorded = spark.table(ctx.tables.captions).filter(
        ctx.asked_here & (F.col("status") == "invalid")
        & (F.col("error_class") == groups.NO_GROUP)
    ).select("path", F.col("size_bytes").alias("length"),
             F.col("modified_at").alias("modificationTime"))
    # Files no group takes are recorded once (invalid, never read) in the first batch.
    ungrouped = (
        keyed.filter(F.col("group_key").isNull())
        .join(recorded, ["path", "length", "modificationTime"], "left_anti")
        .select(*keyed.columns, F.lit(None).cast("string").alias("fingerprint"),
                F.lit(0).cast("long").alias("batch"))
    )
    # Checkpointed: the numbering must not change while merges change the tables.
    todo = in_groups.select(*ungrouped.columns).unionByName(ungrouped).localCheckpoint(eager=True)
    pending = todo.count()
    result.skipped = result.listed - pending
    stats = todo.agg(F.max("batch").alias("last"),
                     F.countDistinct("group_key").alias("groups")).first()
    batches = 0 if pending == 0 else int(stats["last"]) + 1
    return todo, batches, int(stats["groups"])


def _process(
    spark: SparkSession, ctx: RunContext, rows: list, held: Held
) -> tuple[DataFrame, DataFrame]:
    """The captions rows and the groups rows of one batch."""
    rule = ctx.config.group_by
    refused = {
        r["path"]: Rejected(groups.NO_GROUP, groups.no_group_message(rule))
        for r in rows if r["group_key"] is None
    }
    prepared = prepare_batch(spark, ctx, rows, held, refused)
    keys = spark.createDataFrame([(r["path"], r["group_key"]) for r in rows],
                                 "path STRING, group_key STRING")
    prepared = prepared.join(keys, "path")
    valid = prepared.filter(F.col("error_class").isNull())
    group_count = len({r["group_key"] for r in rows if r["group_key"] is not None})
    tasks = caption_tasks(spark, ctx, group_count)
    plan = CallPlan(ctx.plan_client, ctx.spec, ctx.model, tasks,
                    max_request_bytes=ctx.family.max_request_bytes)
    parts = [
        r.asDict()
        for r in valid.select("group_key", "path", "mime", "image", "estimated_image_tokens")
        .repartition(tasks, "group_key")
        .sortWithinPartitions("group_key", "path")
        .mapInPandas(group_udf(plan, ctx.family.max_images_per_request), GROUP_PART)
        .collect()  # one small row per request: answers and usage, no image bytes
    ]
    answers = spark.createDataFrame(
        [{**m, "answer_path": m.pop("path")} for p in parts for m in groups.member_results(p)],
        MEMBER_ANSWER,
    )
    members = rows_of(ctx, prepared, answers, by_path=True).localCheckpoint(eager=True)
    return members, _group_rows(spark, ctx, rows, parts)


def _group_rows(spark: SparkSession, ctx: RunContext, rows: list, parts: list) -> DataFrame:
    by_group: dict[str, list] = defaultdict(list)
    for part in parts:
        by_group[part["group_key"]].append(part)
    members: dict[str, list[str]] = defaultdict(list)
    fingerprints: dict[str, str] = {}
    for r in rows:
        if r["group_key"] is not None:
            members[r["group_key"]].append(r["path"])
            fingerprints[r["group_key"]] = r["fingerprint"]
    answered = [
        {**groups.group_row(key, paths, fingerprints[key], by_group.get(key, [])),
         "endpoint": ctx.endpoint, "prompt_id": ctx.prompt_id, "run_id": ctx.run_id}
        for key, paths in sorted(members.items())
    ]
    schema = spark.table(ctx.tables.groups).schema
    names = [f.name for f in schema if f.name != "processed_at"]
    frame = spark.createDataFrame(
        [tuple(row.get(n) for n in names) for row in answered],
        StructType([f for f in schema if f.name != "processed_at"]),
    )
    return frame.withColumn("processed_at", F.current_timestamp())
