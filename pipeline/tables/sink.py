"""The Delta tables: created from the DDL in sql/, written batch by batch with MERGE.

`--table` with a `/` in it is a path. Spark's SQL cannot MERGE into IDENTIFIER('delta.`path`')
outside Databricks, so a path table is also registered under a stable name in the session
catalog; every statement (ours and the SQL path's templates) then names it through
IDENTIFIER(:table), and no value is ever formatted into SQL text.

Rows arrive as plain Python dicts built on the driver (a batch's rows are in hand anyway):
each write is one small local DataFrame and one statement, and what was written is counted
from those rows, not by another Spark job.

What keeps a batch as cheap at the ten-millionth row as at the first (docs/operations.md, "Long
runs"): each MERGE names the key range of its batch (`t.path BETWEEN :first_path
AND :last_path`), so Delta reads only the files whose min/max statistics overlap it, not the
whole table; batches arrive in key order, so the files they leave hold narrow ranges. The
statistics of a string keep a prefix of it (32 characters by default), and paths share much
longer ones: a local session keeps STRING_STATS characters (`tune`). Auto compaction keeps
the file count down, in files of at most COMPACTED_BYTES, so a MERGE that updates a row
rewrites that much at most. Every table is auto-compacted (the DDL's TBLPROPERTIES; a table
made by an older version gains them, `_adopt`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
from delta import exceptions as delta_errors
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType, _parse_datatype_string
from pyspark.sql.window import Window

from pipeline.errors import RunError
from pipeline.files import localfs
from pipeline.resources import sql_text
from pipeline.spark import analyze, is_local

# Delta's optimistic concurrency: two runs merging into one table can conflict. The
# loser retries against the new snapshot. Delta's own exception types say so on a classic
# session; on Spark Connect the error arrives as text, so these markers name the retriable
# conflicts there, and the races of two runs creating one table everywhere.
_CONFLICT_TYPES = (
    delta_errors.DeltaConcurrentModificationException,
    delta_errors.ConcurrentWriteException,
    delta_errors.MetadataChangedException,
    delta_errors.ProtocolChangedException,
    delta_errors.ConcurrentAppendException,
    delta_errors.ConcurrentDeleteReadException,
    delta_errors.ConcurrentDeleteDeleteException,
    delta_errors.ConcurrentTransactionException,
)
_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DELTA_CONCURRENT",
    "DELTA_METADATA_CHANGED",
    "DELTA_PROTOCOL_CHANGED",
    # Two runs creating the same path table at once: the loser sees a half-made table.
    "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION",
    "TableAlreadyExists",
    "TABLE_OR_VIEW_ALREADY_EXISTS",
    # ...or registers it between the other run's first file and its first commit.
    "DELTA_CREATE_EXTERNAL_TABLE_WITHOUT_TXN_LOG",
)
MAX_COMMIT_ATTEMPTS = 8

# The table property every CREATE in sql/ sets: a table this program made. And the columns
# that identify each kind of table made before the mark existed.
MARK = "vision_batch.schema_version"
KEYS = {"create_captions.sql": ("path", "endpoint", "prompt_id"),
        "create_runs.sql": ("run_id",),
        "create_groups.sql": ("group_key", "endpoint", "prompt_id"),
        "create_claims.sql": ("unit", "run_id"),
        "create_journal.sql": ("run_id", "row_json")}

# Table properties of the DDL that a table made by an older version is given (never changed
# where the table has its own value), each by its one statement in sql/.
UPKEEP = {"delta.autoOptimize.autoCompact": "auto_compact.sql",
          "delta.logRetentionDuration": "claims_log_retention.sql"}

# A local session's Delta settings for these tables (`tune`). Elsewhere the session is not
# ours to change: set them in the cluster's Spark config (docs/compute.md).
STRING_STATS = 256  # characters of a string column's min/max statistics (Delta keeps 32)
COMPACTED_BYTES = 16 * 1024 * 1024  # auto compaction's files: at most this (Delta: 128 MB)
# Each setting, and which of its value and one set already is kept: longer statistics,
# smaller compacted files.
SESSION = {"spark.databricks.io.skipping.stringPrefixLength": (STRING_STATS, max),
           "spark.databricks.delta.autoCompact.maxFileSize": (COMPACTED_BYTES, min)}

# Columns that travel from Python as epoch microseconds (exact, whatever the time zones of
# the driver and the session), and the column stamped with the time of the write.
MICROS = ("modified_at", "started_at", "ended_at", "expires_at")
NOW = ("processed_at", "written_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TableError(RunError):
    """The table cannot be used (not Delta, unreadable); one line for the user."""


@dataclass(frozen=True)
class Tables:
    captions: str  # a name IDENTIFIER() accepts
    runs: str
    location: str | None = None  # set for path tables
    schema: StructType | None = field(default=None, compare=False)  # captions', once resolved
    created: bool = field(default=False, compare=False)  # by this run: it holds no row yet

    @property
    def display(self) -> str:
        return self.location or self.captions

    @property
    def groups(self) -> str:
        """`<table>_groups`: group answers (--group-by); created by `ensure_groups`."""
        return self.captions + "_groups"

    @property
    def claims(self) -> str:
        """`<table>_claims`: which run asks which units (pipeline/runs/claims.py); created by
        `ensure_claims`."""
        return self.captions + "_claims"

    @property
    def journal(self) -> str:
        """`<table>_journal`: answers made durable as they arrive (pipeline/runs/journal.py);
        created by `ensure_journal`."""
        return self.captions + "_journal"

    def sibling(self, suffix: str) -> str | None:
        """The location of `<table><suffix>` for a path table."""
        return None if self.location is None else self.location.rstrip("/") + suffix


def is_path(table: str) -> bool:
    return "/" in table


def named(table: str) -> Tables:
    """The names our statements use for `--table` (a path table's alias is derived from its
    location, so every run and session agrees on it). Nothing is looked up or created."""
    if not is_path(table):
        return Tables(table, f"{table}_runs")
    location = _absolute(table)
    alias = "vision_batch_" + hashlib.sha1(location.encode()).hexdigest()[:12]
    return Tables(alias, alias + "_runs", location)


def fresh(spark: SparkSession, tables: Tables) -> bool:
    """Neither the captions table nor its runs table is there yet: a first run (a quick
    look, no Delta statement)."""
    return not _exists(spark, tables, "") and not _exists(spark, tables, "_runs")


def tune(spark: SparkSession) -> None:
    """A local session (ours: made for this command) writes statistics that let each MERGE
    skip the files outside its batch's key range, and compacts into files a MERGE rewrites
    quickly (SESSION; a value set already that does better is kept). Elsewhere the session
    is left as it is."""
    if not is_local(spark):
        return
    for key, (value, keep) in SESSION.items():
        try:
            now = spark.conf.get(key, None)
            wanted = value if now is None else keep(int(now), value)
            if str(wanted) != now:
                spark.conf.set(key, str(wanted))
        except Exception:  # noqa: S110 - a value it cannot read, or a server that pins it
            pass


def _exists(spark: SparkSession, tables: Tables, suffix: str) -> bool:
    """Whether `<table><suffix>` is there. A folder that holds something other than a Delta
    table is refused here, before anything is created."""
    location = tables.sibling(suffix)
    if location is None:
        return spark.catalog.tableExists(tables.captions + suffix)
    _check_not_foreign(spark, location)
    return is_delta(spark, location)


def resolve(spark: SparkSession, table: str) -> Tables:
    """The captions table, created (from sql/ DDL) or brought up to it if needed. The runs
    table waits for `ensure_runs`, so a run pays for it only when it writes there."""
    tune(spark)
    tables = named(table)
    created = not _exists(spark, tables, "")
    if created:
        target = table if tables.location is None else _delta_path(tables.location)
        _with_retries(lambda: spark.sql(sql_text("create_captions.sql"), args={"table": target}))
    if tables.location is not None:
        _register(spark, tables.captions, tables.location)
    schema = _with_retries(lambda: _adopt(spark, tables.captions, "create_captions.sql",
                                          tables.display))
    return replace(tables, schema=schema, created=created)


def ensure_runs(spark: SparkSession, tables: Tables) -> None:
    """Create the runs table next to the captions table, or bring it up to the DDL."""
    _ensure_sibling(spark, tables, "_runs", "create_runs.sql", "runs_table")


def ensure_groups(spark: SparkSession, tables: Tables) -> StructType:
    """Create the groups table next to the captions table, or check it; its schema."""
    return _ensure_sibling(spark, tables, "_groups", "create_groups.sql", "groups_table")


def ensure_claims(spark: SparkSession, tables: Tables) -> None:
    """Create the claims table next to the captions table, or check it."""
    _ensure_sibling(spark, tables, "_claims", "create_claims.sql", "claims_table")


def ensure_journal(spark: SparkSession, tables: Tables) -> None:
    """Create the journal next to the captions table, or check it."""
    _ensure_sibling(spark, tables, "_journal", "create_journal.sql", "journal_table")


def present(spark: SparkSession, tables: Tables, suffix: str) -> bool:
    """Whether `<table><suffix>` is there (then readable by its name); nothing is created."""
    if not _exists(spark, tables, suffix):
        return False
    location = tables.sibling(suffix)
    if location is not None:
        _register(spark, tables.captions + suffix, location)
    return True


def _ensure_sibling(spark: SparkSession, tables: Tables, suffix: str, ddl_file: str,
                    marker: str) -> StructType:
    """Create `<table><suffix>` from its DDL file unless it exists (then check it is ours and
    bring it up to the DDL), under the name the other statements use (for a path table:
    registered in the session's catalog). Its schema."""
    tune(spark)
    name = tables.captions + suffix
    location = tables.sibling(suffix)
    if not _exists(spark, tables, suffix):
        target = name if location is None else _delta_path(location)
        _with_retries(lambda: spark.sql(sql_text(ddl_file), args={marker: target}))
    if location is not None:
        _register(spark, name, location)
    return _with_retries(lambda: _adopt(spark, name, ddl_file, location or name))


def find(spark: SparkSession, table: str) -> Tables | None:
    """The tables if they already exist, without creating anything (for dry runs)."""
    tables = named(table)
    if tables.location is None:
        return tables if spark.catalog.tableExists(table) else None
    if not is_delta(spark, tables.location):
        return None
    tables = resolve(spark, table)
    runs = tables.sibling("_runs")
    if runs is not None and is_delta(spark, runs):  # a path table: runs is its sibling's path
        _register(spark, tables.runs, runs)
    return tables


def merge_captions(
    spark: SparkSession, tables: Tables, rows: list[dict[str, Any]], new: bool = False
) -> None:
    """MERGE one batch's rows into the captions table, keyed by (path, endpoint, prompt_id).

    `new`: the plan found no row for any of these files, so Delta's insert-only MERGE is
    tried first (it rewrites no file). If its own metrics say it inserted fewer rows than it
    was given, another run wrote some of these files meanwhile, and the full MERGE
    (sql/merge_captions.sql) decides for them as for any replay.

    Both name the batch's first and last path: Delta reads only the table's files whose
    paths overlap that range (the rows it could match are all there).
    """
    if not rows:
        return
    paths = [r["path"] for r in rows]
    args = {"table": tables.captions, "first_path": min(paths), "last_path": max(paths)}

    def write(view: str) -> None:
        if new:
            merged = _with_retries(lambda: spark.sql(sql_text("merge_captions_new.sql"),
                                                     args={**args, "batch": view}).first())
            if merged is not None and merged["num_inserted_rows"] == len(rows):
                return
        _with_retries(lambda: spark.sql(sql_text("merge_captions.sql"),
                                        args={**args, "batch": view}))

    schema = tables.schema or spark.table(tables.captions).schema
    _with_view(spark, frame_of(spark, schema, rows), write)


def merge_batch(spark: SparkSession, tables: Tables, batch: DataFrame) -> None:
    """MERGE rows already in a DataFrame (a replay, a repair) into the captions table."""
    bounds = batch.agg(F.min("path").alias("first"), F.max("path").alias("last")).first()
    if bounds is None or bounds["first"] is None:  # no row: nothing to merge
        return
    _merge(spark, "merge_captions.sql", _aligned(tables.schema or spark.table(
        tables.captions).schema, batch), "batch", table=tables.captions,
        first_path=bounds["first"], last_path=bounds["last"])


def merge_groups(spark: SparkSession, tables: Tables, schema: StructType,
                 rows: list[dict[str, Any]]) -> None:
    """MERGE one batch of group answers into the groups table (reading only the files whose
    group keys overlap the batch's)."""
    if not rows:
        return
    keys = [r["group_key"] for r in rows]
    _merge(spark, "merge_groups.sql", frame_of(spark, schema, rows), "groups",
           groups_table=tables.groups, first_key=min(keys), last_key=max(keys))


def insert_run(spark: SparkSession, tables: Tables, row: dict[str, Any]) -> None:
    """Append a run's row: a new run_id, so no MERGE is needed and none can conflict."""
    schema = spark.table(tables.runs).schema
    _with_view(spark, frame_of(spark, schema, [row]), lambda view: _with_retries(
        lambda: spark.sql(sql_text("insert_run.sql"),
                          args={"runs_table": tables.runs, "run": view})))


def upsert_run(spark: SparkSession, tables: Tables, row: dict[str, Any]) -> None:
    """Complete (or insert) a run's row, keyed by run_id."""
    schema = spark.table(tables.runs).schema
    _merge(spark, "merge_run.sql", frame_of(spark, schema, [row]), "run",
           runs_table=tables.runs)


def insert_claims(spark: SparkSession, tables: Tables, rows: list[dict[str, Any]]) -> None:
    """Append claim and lease rows: a blind append, which no other run's write conflicts
    with."""
    frame = frame_of(spark, ddl_schema("create_claims.sql"), rows)
    _with_view(spark, frame, lambda view: _with_retries(
        lambda: spark.sql(sql_text("insert_claims.sql"),
                          args={"claims_table": tables.claims, "claims": view})))


def insert_journal(spark: SparkSession, tables: Tables, rows: list[dict[str, Any]]) -> None:
    """Append answers to the journal: a blind append, which conflicts with no one."""
    frame = frame_of(spark, ddl_schema("create_journal.sql"), rows)
    _with_view(spark, frame, lambda view: _with_retries(
        lambda: spark.sql(sql_text("insert_journal.sql"),
                          args={"journal_table": tables.journal, "rows": view})))


def forget_journal(spark: SparkSession, tables: Tables, done: dict[str, int]) -> None:
    """Drop the journal rows of these runs up to these batches (their rows are written)."""
    frame = spark.createDataFrame(list(done.items()), "run_id STRING, batch INT")
    _merge(spark, "forget_journal.sql", frame, "done", journal_table=tables.journal)


def journaled_runs(spark: SparkSession, tables: Tables) -> list[str]:
    """The runs that have rows in the journal."""
    rows = spark.table(tables.journal).select("run_id").distinct().collect()
    return sorted(r["run_id"] for r in rows)


def fold_journal(spark: SparkSession, tables: Tables, runs: list[str]) -> int:
    """MERGE the journal rows of these runs (dead: they will never MERGE them themselves)
    into the captions and groups tables, as their own batches would have, then drop them.
    A file journaled by several runs is written once: its `ok` answer, else its latest.
    How many captions rows were folded."""
    journal = spark.table(tables.journal).filter(F.col("run_id").isin(runs))
    captions = _journaled(journal, "captions", tables.schema or spark.table(
        tables.captions).schema, ["path", "endpoint", "prompt_id"])
    folded = captions.count()
    if folded:
        merge_batch(spark, tables, captions)
    if present(spark, tables, "_groups"):  # (a grouped run made it before it journaled)
        groups_schema = spark.table(tables.groups).schema
        answers = _journaled(journal, "groups", groups_schema,
                             ["group_key", "endpoint", "prompt_id"])
        bounds = answers.agg(F.min("group_key").alias("first"),
                             F.max("group_key").alias("last")).first()
        if bounds is not None and bounds["first"] is not None:
            _merge(spark, "merge_groups.sql", _aligned(groups_schema, answers), "groups",
                   groups_table=tables.groups, first_key=bounds["first"],
                   last_key=bounds["last"])
    forget_journal(spark, tables, dict.fromkeys(runs, 2**31 - 1))
    return folded


def _journaled(journal: DataFrame, kind: str, schema: StructType,
               key: list[str]) -> DataFrame:
    """The journal's rows of one `kind`, in the columns of `schema` (MICROS as journaled:
    epoch microseconds), one per key: an `ok` one first, then the latest."""
    as_written = StructType([StructField(f.name, LongType()) if f.name in MICROS else f
                             for f in schema.fields])
    rows = (journal.filter(F.col("kind") == kind)
            .select(F.from_json("row_json", as_written).alias("r"), "written_at")
            .select("r.*", "written_at"))
    rows = rows.select(*[
        F.timestamp_micros(F.col(f.name)).alias(f.name) if f.name in MICROS
        else F.col("written_at").alias(f.name) if f.name in NOW
        else F.col(f.name) for f in schema.fields], "written_at")
    best = F.struct((F.col("status") == "ok").alias("ok"), F.col("written_at"))
    ranked = rows.withColumn("_best", F.max(best).over(Window.partitionBy(*key)))
    return ranked.filter(best == F.col("_best")).dropDuplicates(key).drop("_best", "written_at")


def forget_claims(spark: SparkSession, tables: Tables, runs: list[str]) -> None:
    """Delete the claims and leases of these runs (long gone)."""
    gone = spark.createDataFrame([(run,) for run in runs], "run_id STRING")
    _merge(spark, "forget_claims.sql", gone, "gone", claims_table=tables.claims)


def frame_of(spark: SparkSession, schema: StructType, rows: list[dict[str, Any]]) -> DataFrame:
    """`rows` as a DataFrame with exactly the columns of `schema`, in its order and types:
    NULL where a row has no value, MICROS as UTC times, NOW stamped. It travels as Arrow
    and lands as a local relation: no Python worker reads it back, however often the MERGE
    scans it."""
    now = datetime.now(timezone.utc)

    def value(name: str, row: dict[str, Any]) -> Any:
        if name in NOW:
            return now
        found = row.get(name)
        if name in MICROS and found is not None:
            return _EPOCH + timedelta(microseconds=found)
        return found

    # Object columns: pandas must not turn a column of ints with a NULL into floats.
    columns = {f.name: pd.Series([value(f.name, row) for row in rows], dtype=object)
               for f in schema.fields}
    return spark.createDataFrame(pd.DataFrame(columns), schema)


def _aligned(schema: StructType, rows: DataFrame) -> DataFrame:
    """`rows` with every column of the table, in its order and types."""
    return rows.select(
        *[(rows[f.name] if f.name in rows.columns else F.lit(None)).cast(f.dataType)
          .alias(f.name) for f in schema]
    )


def _merge(spark: SparkSession, template: str, source: DataFrame, source_marker: str,
           **tables: str) -> None:
    """Run a MERGE template from sql/ with `source` bound, as a temporary view, to a marker
    (and the other markers to `tables`: names and values)."""
    _with_view(spark, source, lambda view: _with_retries(
        lambda: spark.sql(sql_text(template), args={**tables, source_marker: view})))


def _with_view(spark: SparkSession, source: DataFrame, action) -> None:
    view = f"vision_batch_source_{os.getpid()}_{random.randrange(1 << 30)}"
    source.createOrReplaceTempView(view)
    try:
        action(view)
    finally:
        spark.catalog.dropTempView(view)


def ddl_schema(ddl_file: str) -> StructType:
    """The columns a CREATE TABLE file in sql/ declares (needs an active Spark session)."""
    text = sql_text(ddl_file)
    start = text.index("(", text.index(")", text.index("IDENTIFIER("))) + 1
    schema = _parse_datatype_string(text[start: text.rindex(") USING DELTA")])
    assert isinstance(schema, StructType)  # a list of columns parses as a struct
    return schema


def _adopt(spark: SparkSession, table: str, ddl_file: str, shown: str) -> StructType:
    """Check that `table` is ours and bring it up to its DDL; its schema after. Ours: it has
    the mark every CREATE in sql/ sets, or (made before the mark existed, and then marked
    now) the key columns of its kind. Anything else is refused before a byte of it changes."""
    schema = spark.table(table).schema
    properties = {r["key"] for r in spark.sql(sql_text("table_properties.sql"),
                                              args={"table": table}).collect()}
    if MARK not in properties:
        missing = [k for k in KEYS[ddl_file] if k not in schema.names]
        if missing:
            raise TableError(f"{shown} is a table vision-batch did not make (it has no "
                             f"{', '.join(missing)} column): name a new table; nothing was "
                             "changed")
        spark.sql(sql_text("mark_table.sql"), args={"table": table})
    for key in sorted((set(ddl_properties(ddl_file)) & set(UPKEEP)) - properties):
        spark.sql(sql_text(UPKEEP[key]), args={"table": table})
    return _add_missing_columns(spark, table, ddl_file, schema)


def ddl_properties(ddl_file: str) -> dict[str, str]:
    """The table properties a CREATE TABLE file in sql/ sets."""
    return properties_in(sql_text(ddl_file))


def properties_in(ddl: str) -> dict[str, str]:
    """The table properties of a CREATE TABLE statement's TBLPROPERTIES clause."""
    clause = ddl[ddl.rindex("TBLPROPERTIES"):]
    return dict(re.findall(r"'([^']+)'\s*=\s*'([^']*)'", clause))


def _add_missing_columns(spark: SparkSession, table: str, ddl_file: str,
                         schema: StructType) -> StructType:
    """Bring a table made by an older version up to the DDL: an empty append that evolves
    the schema adds the new (nullable) columns; no SQL text is assembled. The schema after."""
    declared = ddl_schema(ddl_file)
    if set(declared.names) - set(schema.names):
        empty = spark.createDataFrame([], declared)
        empty.write.format("delta").mode("append").option("mergeSchema", "true").saveAsTable(
            table
        )
        schema = spark.table(table).schema
    return schema


def is_delta(spark: SparkSession, location: str) -> bool:
    """Whether a Delta table (with at least one commit) lives at `location`."""
    local = localfs.os_path(location)
    if local is not None:
        log = os.path.join(local, "_delta_log")
        return bool(glob.glob(os.path.join(glob.escape(log), "*.json")))
    try:
        analyze(spark.read.format("delta").load(location))
        return True
    except Exception:
        return False


def _delta_path(location: str) -> str:
    return "delta.`" + location.replace("`", "``") + "`"


def _absolute(table: str) -> str:
    if "://" in table or table.startswith("dbfs:") or table.startswith("file:"):
        return table
    return os.path.abspath(table)


def _register(spark: SparkSession, name: str, location: str) -> None:
    if not spark.catalog.tableExists(name):
        _with_retries(lambda: spark.catalog.createTable(name, path=location, source="delta"))


def _check_not_foreign(spark: SparkSession, location: str) -> None:
    """Refuse a folder that holds something other than a Delta table. Only where the folder
    has an os path: elsewhere Delta itself refuses to create a table over other files."""
    local = localfs.os_path(location)
    if local is None or not os.path.exists(local):
        return
    if not os.path.isdir(local):
        raise TableError(f"--table {location} is a file, not a Delta table folder")
    names = set(os.listdir(local))
    # A `_delta_log` without a commit yet is a table another run is creating right now.
    if names and "_delta_log" not in names:
        raise TableError(f"--table {location} holds files but is not a Delta table")


def retriable(exc: BaseException) -> bool:
    """A write conflict that a retry against the new snapshot resolves."""
    return isinstance(exc, _CONFLICT_TYPES) or any(m in str(exc) for m in _CONFLICTS)


def _with_retries(action):
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == MAX_COMMIT_ATTEMPTS or not retriable(exc):
                raise
            time.sleep(random.uniform(0, 0.2 * 2**attempt))
    return None
