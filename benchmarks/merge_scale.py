"""Batch MERGEs into tables that already hold many rows, simulated on 2 cores: does a batch
cost the same with 10 million rows in the captions table as with 100,000? Before (the SQL
and settings of a baseline commit) and after (this checkout), side by side in one run.

Part 1, the captions table. N synthetic rows (0.1, 1 and 10 million) laid out as runs leave
it: batches written in path order and auto-compacted, so files each hold a narrow range of
paths, of the size auto compaction leaves (it rewrites files under half its target until they
pass that), and the last 20 batches of 1000 rows not compacted yet. Paths share a 41-character
prefix, as files under a Unity Catalog volume do. One table per N and side:
    before  the baseline's MERGE text, Delta's defaults: string statistics of 32 characters,
            compaction target 128 MB
    after   sink.merge_captions, and the session as sink.tune leaves a local one
Then, alternately on the two tables (--reps times), two MERGEs of a batch of 100 files:
    new     100 files with no row yet: the insert-only MERGE (sql/merge_captions_new.sql)
    replay  100 files that have a row, answered again: sql/merge_captions.sql updates them
Printed per N: seconds per MERGE (median, and the range over the reps), the files in the
table, the files the MERGE's scans opened (Spark's SQL metrics, summed over its jobs), and
the files it rewrote with the rows it copied (DESCRIBE HISTORY); and, for scale, the reuse
lookup a batch of a run into a table that holds answers makes (single.py, unchanged here).

Part 2, the claims table. `Claims._read` of a chunk of 1000 units against claims tables of
20,000, 200,000 and 2 million claim rows (claimed 1000 at a time, with the chunk's lease row,
and a lease-only write after each chunk, as a run renews every lease/3 s): before (the
baseline's query; files as appends leave them: two a claim, one a renewal) and after (this
checkout's `_read`; files as auto compaction leaves them).

Part 3, the runs table. The run's last MERGE (sink.upsert_run) into runs tables of 1,000 and
5,000 runs: before (no compaction: a file a run) and after (compacted).

    python benchmarks/merge_scale.py [--millions 0.1 1 10] [--reps 2] [--parts 1 2 3]
        [--baseline REF]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import REPO

BASELINE = "bf2776b"  # the last commit before the MERGEs named their batch's path range
PREFIX = "file:/Volumes/main/media/photos/camera-01/"  # 41 characters, as volumes have
TAIL_FILES, TAIL_ROWS = 20, 1000  # recent batches auto compaction has not taken yet
BATCH = 100
PROMPT_ID = "0123456789abcdef"
# Auto compaction takes files under half its target and bins them up to the target: files
# end a little over half of it (the rows' size measured on the first table written).
FILL = 0.55
DELTA_TARGET = 128 * 1024 * 1024  # Delta's autoCompact.maxFileSize default
PREFIX_KEY = "spark.databricks.io.skipping.stringPrefixLength"
TARGET_KEY = "spark.databricks.delta.autoCompact.maxFileSize"
OPTIMIZE_WRITE_KEY = "spark.databricks.delta.optimizeWrite.enabled"


def baseline_sql(ref: str, name: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:sql/{name}"], check=True,
                          capture_output=True, text=True).stdout


def made(spark, side: str, ref: str, table: str, ddl: str, marker: str, suffix: str = ""):
    """The tables of `table` (a path), with `<table><suffix>` made: before, by the baseline's
    DDL, registered as sink names it and left as it is; after, by sink (its DDL, and the
    session tuned). Then the session gets the side's settings."""
    from pipeline.tables import sink

    tables = sink.named(table)
    if side == "after":
        tables = sink.resolve(spark, table)
        if suffix == "_runs":
            sink.ensure_runs(spark, tables)
        elif suffix == "_claims":
            sink.ensure_claims(spark, tables)
    else:
        location = tables.sibling(suffix)
        assert location is not None
        spark.sql(baseline_sql(ref, ddl), args={marker: f"delta.`{location}`"})
        sink._register(spark, tables.captions + suffix, location)
    settings(spark, side)
    schema = spark.table(tables.captions + suffix).schema
    return replace(tables, schema=schema if not suffix else None, created=False)


def settings(spark, side: str) -> None:
    """The session's Delta settings of a side: Delta's defaults before, sink.tune's after."""
    from pipeline.tables import sink

    if side == "before":
        spark.conf.set(PREFIX_KEY, "32")
        spark.conf.set(TARGET_KEY, str(DELTA_TARGET))
    else:
        for key, (value, _) in sink.SESSION.items():
            spark.conf.set(key, str(value))


class Scans:
    """Files opened by Parquet scans, from Spark's SQL metrics (a benchmark may look inside
    the JVM; the package never does)."""

    def __init__(self, spark) -> None:
        self.store = spark._jsparkSession.sharedState().statusStore()

    def mark(self) -> int:
        executions = self.store.executionsList()
        return executions.size()

    def files_since(self, mark: int, table: str) -> int:
        """Data files of `table` opened since `mark` (not the Delta log's checkpoints)."""
        executions = self.store.executionsList()
        total = 0
        for k in range(mark, executions.size()):
            execution = executions.apply(k)
            values = execution.metricValues()
            if values is None:
                continue
            nodes = self.store.planGraph(execution.executionId()).allNodes()
            for i in range(nodes.size()):
                node = nodes.apply(i)
                if not node.name().startswith("Scan parquet") or table not in node.name():
                    continue
                metrics = node.metrics()
                for j in range(metrics.size()):
                    metric = metrics.apply(j)
                    if metric.name() == "number of files read":
                        value = values.get(metric.accumulatorId())
                        if value.isDefined():
                            total += int(str(value.get()).replace(",", ""))
        return total


# --- Part 1: captions ---------------------------------------------------------------------

def synthetic(spark, schema, ids, replay: str = "", suffix: str = ""):
    """Rows for ids (a DataFrame with `id`): what a run writes, 1% failed. `replay` marks a
    second answer (a new caption); `suffix` makes other files (paths just after the id's)."""
    from pyspark.sql import functions as F

    words = [F.lit(w) for w in ("a cat", "two dogs", "a red car", "the sea", "a mountain",
                                "a busy street", "a kitchen", "children playing", "a bridge",
                                "a forest")]
    light = [F.lit(w) for w in ("morning light", "the rain", "winter", "a city", "summer",
                                "the evening", "fog", "snow")]
    failed = (F.col("id") % 100 == 37) & F.lit(not replay)
    cols = {
        "path": F.format_string(PREFIX + "%09d" + suffix + ".jpg", "id"),
        "content_sha256": F.sha2(F.concat(F.col("id").cast("string"), F.lit(suffix)), 256),
        "size_bytes": 100_000 + F.col("id") % 900_000,
        "modified_at": F.timestamp_seconds(F.lit(1_700_000_000) + F.col("id")),
        "format": F.lit("JPEG"), "width": F.col("id") % 4000, "height": F.col("id") % 3000,
        "sent_width": F.lit(1024), "sent_height": F.lit(768),
        "sent_bytes": F.col("id") % 200_000,
        "endpoint": F.lit("bench-vlm"), "prompt_id": F.lit(PROMPT_ID),
        "status": F.when(failed, F.lit("failed")).otherwise(F.lit("ok")),
        "error_class": F.when(failed, F.lit("timeout")),
        "caption": F.when(~failed, F.concat_ws(
            " ", F.lit("A photo of"), F.element_at(F.array(*words), (F.col("id") % 10 + 1)
                                                   .cast("int")),
            F.lit("in"), F.element_at(F.array(*light), ((F.col("id") / 10) % 8 + 1)
                                      .cast("int")),
            F.lit(replay), F.substring(F.sha2(F.col("id").cast("string"), 224), 1, 20))),
        "prompt_tokens": F.lit(800), "completion_tokens": F.col("id") % 60,
        "total_tokens": 800 + F.col("id") % 60, "usage_source": F.lit("endpoint"),
        "estimated_image_tokens": F.lit(765), "attempts": F.lit(1),
        "latency_ms": F.col("id") % 3000,
        "run_id": F.format_string("run-%06d", (F.col("id") / 100_000).cast("long")),
        "processed_at": F.current_timestamp(), "request_share": F.lit(1.0),
    }
    return ids.select(*[(cols[f.name] if f.name in cols else F.lit(None)).cast(f.dataType)
                        .alias(f.name) for f in schema])


@contextmanager
def files_as_partitioned(spark):
    """A file per partition of the write: no optimized write (the captions table asks for
    one), which would pack the layout being built into one file."""
    spark.conf.set(OPTIMIZE_WRITE_KEY, "false")
    try:
        yield
    finally:
        spark.conf.unset(OPTIMIZE_WRITE_KEY)


def build(spark, side: str, ref: str, where: Path, n: int, target: int, row_bytes: float):
    """A captions table of n rows, laid out as auto compaction with `target` leaves it."""
    tables = made(spark, side, ref, str(where), "create_captions.sql", "table")
    schema = tables.schema
    compacted = max(0, n - TAIL_FILES * TAIL_ROWS)
    per_file = max(1, int(FILL * target / row_bytes))
    # spark.range splits into consecutive ids, and paths sort as their ids: a file per split,
    # in path order, with no shuffle.
    with files_as_partitioned(spark):
        if compacted:
            files = max(1, round(compacted / per_file))
            (synthetic(spark, schema, spark.range(0, compacted, 1, files))
             .write.format("delta").mode("append").saveAsTable(tables.captions))
        (synthetic(spark, schema, spark.range(compacted, n, 1, TAIL_FILES))
         .write.format("delta").mode("append").saveAsTable(tables.captions))
    return tables


def batch_rows(spark, schema, first: int, kind: str) -> list[dict]:
    """A batch of 100 as the run's rows (Python dicts): new files between the table's paths,
    or a replay of files it has."""
    ids = spark.range(first, first + BATCH)
    frame = synthetic(spark, schema, ids, replay="again" if kind == "replay" else "",
                      suffix="n" if kind == "new" else "")
    rows = []
    for row in frame.collect():
        d = row.asDict()
        d["modified_at"] = round(d["modified_at"].replace(tzinfo=timezone.utc).timestamp()
                                 * 1e6)
        rows.append(d)
    return rows


def merge(spark, side: str, tables, rows: list[dict], kind: str, ref: str) -> None:
    from pipeline.tables import sink

    if side == "after":
        sink.merge_captions(spark, tables, rows, new=kind == "new")
        return
    template = baseline_sql(ref, "merge_captions_new.sql" if kind == "new"
                            else "merge_captions.sql")
    view = f"bench_batch_{time.time_ns()}"
    sink.frame_of(spark, tables.schema, rows).createOrReplaceTempView(view)
    spark.sql(template, args={"table": tables.captions, "batch": view}).collect()
    spark.catalog.dropTempView(view)


def described(spark, table: str):
    from delta.tables import DeltaTable

    return DeltaTable.forName(spark, table).detail().first()


def reuse_lookup(spark, tables, first: int) -> int:
    """What a batch of a run into a table holding answers asks first (single.py, `_known`):
    the answers the table holds for the batch's bytes, looked up by SHA-256."""
    from pyspark.sql import functions as F

    shas = [(f"{hash((first, i)) & (2**256 - 1):064x}",) for i in range(BATCH)]
    wanted = spark.createDataFrame(shas, "content_sha256 STRING")
    return len(spark.table(tables.captions)
               .filter((F.col("endpoint") == "bench-vlm") & (F.col("prompt_id") == PROMPT_ID)
                       & (F.col("status") == "ok")
                       & F.col("reused_from").isNull())
               .join(F.broadcast(wanted), "content_sha256", "left_semi")
               .select("content_sha256", "path", "caption").collect())


def last_merge(spark, table: str) -> dict:
    from delta.tables import DeltaTable

    for row in DeltaTable.forName(spark, table).history(5).collect():
        if row["operation"] == "MERGE":
            return dict(row["operationMetrics"])
    return {}


def part1(spark, folder: Path, millions: list[float], reps: int, ref: str) -> None:
    scans = Scans(spark)
    print(f"Part 1: MERGE of a batch of {BATCH} into a captions table of N rows "
          f"(before: {ref}'s SQL and Delta's defaults; after: this checkout)")
    row_bytes = 115.0  # replaced by the first table's measure
    for m in millions:
        n = int(m * 1_000_000)
        tables, layout = {}, {}
        for side in ("before", "after"):
            began = time.perf_counter()
            target = DELTA_TARGET if side == "before" else int(
                settings_value(side, TARGET_KEY))
            where = folder / f"{side}-{n}" / "captions"
            tables[side] = build(spark, side, ref, where, n, target, row_bytes)
            info = described(spark, tables[side].captions)
            row_bytes = info["sizeInBytes"] / n
            layout[side] = (info["numFiles"], info["sizeInBytes"],
                            time.perf_counter() - began)
        print(f"  N = {n:,} ({row_bytes:.0f} bytes a row); files: before "
              f"{layout['before'][0]} of {layout['before'][1] / layout['before'][0] / 2**20:.1f}"
              f" MB on average, after {layout['after'][0]} of "
              f"{layout['after'][1] / layout['after'][0] / 2**20:.1f} MB (written in "
              f"{layout['before'][2]:.0f} s and {layout['after'][2]:.0f} s)")
        results: dict[tuple[str, str], list[tuple[float, int, dict]]] = {}
        for rep in range(reps):
            first = int(n * (0.3 + 0.4 * rep / max(1, reps - 1))) // 1000 * 1000 + 100
            for kind in ("new", "replay"):
                for side in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                    settings(spark, side)
                    rows = batch_rows(spark, tables[side].schema, first, kind)
                    mark = scans.mark()
                    began = time.perf_counter()
                    merge(spark, side, tables[side], rows, kind, ref)
                    seconds = time.perf_counter() - began
                    results.setdefault((kind, side), []).append(
                        (seconds, scans.files_since(mark, tables[side].captions),
                         last_merge(spark, tables[side].captions)))
        lookups = []
        for _ in range(reps):  # on the table as it is now, after the MERGEs
            mark = scans.mark()
            began = time.perf_counter()
            reuse_lookup(spark, tables["after"], first)
            lookups.append((time.perf_counter() - began,
                            scans.files_since(mark, tables["after"].captions)))
        for kind in ("new", "replay"):
            line = []
            for side in ("before", "after"):
                runs = results[(kind, side)]
                secs = [r[0] for r in runs]
                read = max(r[1] for r in runs)
                metrics = runs[-1][2]
                line.append(f"{side} {statistics.median(secs):6.2f} s ({min(secs):.2f}-"
                            f"{max(secs):.2f}), {read} file(s) read, "
                            f"{metrics.get('numTargetFilesRemoved', '?')} rewritten "
                            f"({int(metrics.get('numTargetRowsCopied', 0)):,} rows copied)")
            ratio = (statistics.median(r[0] for r in results[(kind, "before")])
                     / statistics.median(r[0] for r in results[(kind, "after")]))
            print(f"    {kind:6s} {line[0]}  |  {line[1]}  |  {ratio:.1f}x")
        print(f"    the batch's reuse lookup (pipeline/runs/single.py Singles._known, not "
              f"changed here), after: {statistics.median(t for t, _ in lookups):6.2f} s, "
              f"{lookups[-1][1]} file(s) read")
        for side in ("before", "after"):
            shutil.rmtree(folder / f"{side}-{n}", ignore_errors=True)
            spark.sql("DROP TABLE IF EXISTS IDENTIFIER(:t)", args={"t": tables[side].captions})


def settings_value(side: str, key: str) -> str:
    from pipeline.tables import sink

    return str(sink.SESSION[key][0]) if side == "after" else str(DELTA_TARGET)


# --- Part 2: claims -----------------------------------------------------------------------

def baseline_read(spark, claims_table: str, asked_here, units: list[str]) -> list:
    """The baseline's Claims._read query (bf2776b): leases and first claims, two scans."""
    from pyspark.sql import functions as F

    rows = (spark.table(claims_table).filter(asked_here)
            .select("unit", "run_id", "expires_at",
                    F.col("_metadata.row_commit_version").alias("version")))
    leases = (rows.filter(F.col("unit").isNull()).groupBy("run_id")
              .agg(F.max_by("expires_at", "version").alias("until")))
    firsts = (rows.filter(F.col("unit").isin(units)).groupBy("unit", "run_id")
              .agg(F.min("version").alias("first")))
    now = F.lit(datetime.now(timezone.utc))
    return (firsts.join(leases, "run_id", "left")
            .select("unit", "run_id", "first",
                    F.coalesce(F.col("until") > now, F.lit(False)).alias("live")).collect())


def claims_table(spark, folder: Path, side: str, claims: int, ref: str):
    """A claims table of `claims` rows from one run claiming 1000 at a time, plus a lease row
    with each claim and a lease-only write after each. Before: the files appends leave (two
    a claim, one a renewal). After: what auto compaction leaves (COMPACTED_BYTES files, and up
    to its 50 small files: 25 here)."""
    from pyspark.sql import functions as F

    from pipeline.config import RunConfig
    from pipeline.runs.context import context
    from pipeline.tables import sink

    cfg = RunConfig(input="/photos", table=str(folder / f"claims-{side}-{claims}" / "captions"),
                    endpoint="bench-vlm").validate()
    ctx = context(cfg)
    tables = made(spark, side, ref, cfg.table, "create_claims.sql", "claims_table", "_claims")
    chunks = claims // 1000
    until = datetime.now(timezone.utc) + timedelta(hours=1)
    unit = F.format_string("file:/tmp/vb-long-run-abcdefgh/in/img%07d.jpg", "id")
    claimed = spark.range(0, claims).select(
        F.lit(ctx.endpoint).alias("endpoint"), F.lit(ctx.prompt_id).alias("prompt_id"),
        unit.alias("unit"), F.lit(ctx.run_id).alias("run_id"),
        F.lit(None).cast("timestamp").alias("expires_at"), (F.col("id") / 500).cast("long")
        .alias("file"))
    leases = spark.range(0, 2 * chunks).select(
        F.lit(ctx.endpoint).alias("endpoint"), F.lit(ctx.prompt_id).alias("prompt_id"),
        F.lit(None).cast("string").alias("unit"), F.lit(ctx.run_id).alias("run_id"),
        F.lit(until).alias("expires_at"),
        F.when(F.col("id") < chunks, F.col("id") * 2).otherwise(
            2 * chunks + F.col("id") - chunks).alias("file"))
    rows = claimed.unionByName(leases)
    if side == "before":  # a file per value of `file`: 2 a claim, 1 a renewal
        laid = rows.repartitionByRange(3 * chunks, "file").sortWithinPartitions("file", "unit")
    else:
        tail = 25
        per_file = int(FILL * sink.COMPACTED_BYTES / 30)  # about 30 bytes a claim row
        parts = max(1, round(claims / per_file))
        laid = rows.repartitionByRange(parts + tail, "file").sortWithinPartitions("file", "unit")
    with files_as_partitioned(spark):
        laid.drop("file").write.format("delta").mode("append").saveAsTable(tables.claims)
    return ctx, tables


def part2(spark, folder: Path, sizes: list[int], reps: int, ref: str) -> None:
    from pipeline.interrupts import Stop
    from pipeline.runs.claims import Claims

    scans = Scans(spark)
    print(f"Part 2: Claims._read of 1000 units, claims tables of one run (before: {ref}'s "
          "query, no compaction; after: this checkout)")
    for claims in sizes:
        built = {}
        for side in ("before", "after"):
            ctx, tables = claims_table(spark, folder, side, claims, ref)
            info = described(spark, tables.claims)
            built[side] = (ctx, tables, info["numFiles"])
        units = [f"file:/tmp/vb-long-run-abcdefgh/in/img{claims - 500 + i:07d}.jpg"
                 for i in range(1000)]  # half claimed, half not yet
        timings: dict[str, list[tuple[float, int]]] = {"before": [], "after": []}
        for rep in range(reps + 1):  # the first of each side warms up
            for side in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                ctx, tables, _ = built[side]
                mark = scans.mark()
                began = time.perf_counter()
                if side == "before":
                    found = baseline_read(spark, tables.claims, ctx.asked_here, units)
                else:
                    ready: Future = Future()
                    ready.set_result(tables)
                    reader = Claims(spark, replace(ctx, tables=tables), ready,
                                    still_to_do=lambda entries: entries, stop=Stop())
                    reader._tables = tables
                    found = reader._read(units)
                seconds = time.perf_counter() - began
                assert len(found) == 500, len(found)
                if rep:
                    timings[side].append((seconds, scans.files_since(mark, tables.claims)))
        line = [f"{side} {statistics.median(t for t, _ in timings[side]):5.2f} s "
                f"({min(t for t, _ in timings[side]):.2f}-{max(t for t, _ in timings[side]):.2f})"
                f" over {built[side][2]} files ({timings[side][0][1]} opened)"
                for side in ("before", "after")]
        print(f"  {claims:>9,} claims  {line[0]}  |  {line[1]}")
        for side in ("before", "after"):
            shutil.rmtree(folder / f"claims-{side}-{claims}", ignore_errors=True)


# --- Part 3: runs -------------------------------------------------------------------------

def part3(spark, folder: Path, sizes: list[int], reps: int, ref: str) -> None:
    from pyspark.sql import functions as F

    from pipeline.tables import sink

    print("Part 3: the run's last MERGE into a runs table of K runs (before: a file a run; "
          "after: compacted)")
    for runs in sizes:
        timings: dict[str, list[float]] = {"before": [], "after": []}
        built = {}
        for side in ("before", "after"):
            tables = made(spark, side, ref, str(folder / f"runs-{side}-{runs}" / "captions"),
                          "create_runs.sql", "runs_table", "_runs")
            schema = spark.table(tables.runs).schema
            frame = spark.range(0, runs).select(*[
                (F.format_string("run-%08d", "id") if f.name == "run_id" else
                 F.lit("succeeded") if f.name == "status" else F.lit(None))
                .cast(f.dataType).alias(f.name) for f in schema])
            files = runs if side == "before" else 1
            with files_as_partitioned(spark):
                frame.repartitionByRange(files, "run_id").write.format("delta").mode(
                    "append").saveAsTable(tables.runs)
            built[side] = (tables, described(spark, tables.runs)["numFiles"])
        for rep in range(reps + 1):
            for side in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                tables, _ = built[side]
                row = {"run_id": f"run-new-{rep}", "status": "running"}
                began = time.perf_counter()
                sink.insert_run(spark, tables, row)
                sink.upsert_run(spark, tables, {**row, "status": "succeeded"})
                if rep:
                    timings[side].append(time.perf_counter() - began)
        line = [f"{side} {statistics.median(timings[side]):5.2f} s over {built[side][1]} files"
                for side in ("before", "after")]
        print(f"  {runs:>6,} runs  insert + MERGE of the run's row: {line[0]}  |  {line[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--millions", type=float, nargs="+", default=[0.1, 1, 10])
    parser.add_argument("--claims", type=int, nargs="+", default=[20_000, 200_000, 2_000_000])
    parser.add_argument("--runs", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--baseline", default=BASELINE, help="git ref to compare with")
    args = parser.parse_args()

    from pipeline.spark import get_spark

    spark = get_spark("vision-batch-merge-scale")
    folder = Path(tempfile.mkdtemp(prefix="vb-merge-scale-"))
    began = time.perf_counter()
    steps: dict[int, Callable[[], None]] = {
        1: lambda: part1(spark, folder, args.millions, args.reps, args.baseline),
        2: lambda: part2(spark, folder, args.claims, args.reps, args.baseline),
        3: lambda: part3(spark, folder, args.runs, args.reps, args.baseline),
    }
    for part in args.parts:
        steps[part]()
    print(f"({time.perf_counter() - began:.0f} s in all)")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
