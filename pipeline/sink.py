"""The Delta tables: created from the DDL in sql/, written batch by batch with MERGE.

`--table` with a `/` in it is a path. Spark's SQL cannot MERGE into IDENTIFIER('delta.`path`')
outside Databricks, so a path table is also registered under a stable name in the session
catalog; every statement (ours and the SQL path's templates) then names it through
IDENTIFIER(:table), and no value is ever formatted into SQL text.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType, _parse_datatype_string

from pipeline.resources import sql_text

# Delta's optimistic concurrency: two runs merging into one table can conflict. The
# loser retries against the new snapshot; these markers name the retriable conflicts.
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
)
MAX_COMMIT_ATTEMPTS = 8


class TableError(RuntimeError):
    """The table cannot be used (not Delta, unreadable); one line for the user."""


@dataclass(frozen=True)
class Tables:
    captions: str  # a name IDENTIFIER() accepts
    runs: str
    location: str | None = None  # set for path tables

    @property
    def display(self) -> str:
        return self.location or self.captions

    @property
    def groups(self) -> str:
        """`<table>_groups`: group answers (--group-by); created by `ensure_groups`."""
        return self.captions + "_groups"


def is_path(table: str) -> bool:
    return "/" in table


def resolve(spark: SparkSession, table: str) -> Tables:
    """Create both tables if needed (from sql/ DDL) and return the names to use."""
    if not is_path(table):
        tables = Tables(table, f"{table}_runs")
        _with_retries(lambda: _create(spark, tables.captions, tables.runs))
    else:
        location = _absolute(table)
        _check_not_foreign(spark, location)
        runs_location = location.rstrip("/") + "_runs"
        _with_retries(
            lambda: _create(spark, _delta_path(location), _delta_path(runs_location))
        )
        alias = "vision_batch_" + hashlib.sha1(location.encode()).hexdigest()[:12]
        _register(spark, alias, location)
        _register(spark, alias + "_runs", runs_location)
        tables = Tables(alias, alias + "_runs", location)
    _with_retries(lambda: _add_missing_columns(spark, tables.captions, "create_captions.sql"))
    _with_retries(lambda: _add_missing_columns(spark, tables.runs, "create_runs.sql"))
    return tables


def ensure_groups(spark: SparkSession, tables: Tables) -> None:
    """Create the groups table next to the captions table, if it is not there yet."""
    if tables.location is None:
        _with_retries(lambda: spark.sql(sql_text("create_groups.sql"),
                                        args={"groups_table": tables.groups}))
        return
    location = tables.location.rstrip("/") + "_groups"
    _with_retries(lambda: spark.sql(sql_text("create_groups.sql"),
                                    args={"groups_table": _delta_path(location)}))
    _register(spark, tables.groups, location)


def merge_groups(spark: SparkSession, tables: Tables, rows: DataFrame) -> None:
    """MERGE one batch of group answers into the groups table."""
    aligned = _aligned(spark, tables.groups, rows)
    _merge(spark, "merge_groups.sql", aligned, "groups", groups_table=tables.groups)


def _aligned(spark: SparkSession, table: str, rows: DataFrame) -> DataFrame:
    """`rows` with every column of `table`, in its order and types, NULL where `rows` has
    none (group_key outside groups): UPDATE SET * / INSERT * then write each one."""
    return rows.select(
        *[(rows[f.name] if f.name in rows.columns else F.lit(None)).cast(f.dataType)
          .alias(f.name) for f in spark.table(table).schema]
    )


def find(spark: SparkSession, table: str) -> Tables | None:
    """The tables if they already exist, without creating anything (for dry runs)."""
    from delta.tables import DeltaTable

    if not is_path(table):
        return Tables(table, f"{table}_runs") if spark.catalog.tableExists(table) else None
    location = _absolute(table)
    if not DeltaTable.isDeltaTable(spark, location):
        return None
    return resolve(spark, table)


def merge_batch(spark: SparkSession, tables: Tables, batch: DataFrame) -> None:
    """MERGE one batch into the captions table; retried when another writer got there first."""
    aligned = _aligned(spark, tables.captions, batch)
    _merge(spark, "merge_captions.sql", aligned, "batch", table=tables.captions)


def upsert_run(spark: SparkSession, tables: Tables, row: dict[str, Any]) -> None:
    schema = spark.table(tables.runs).schema
    df = spark.createDataFrame([Row(**{f.name: row.get(f.name) for f in schema})], schema)
    _merge(spark, "merge_run.sql", df, "run", runs_table=tables.runs)


def _merge(
    spark: SparkSession, template: str, source: DataFrame, source_marker: str, **tables: str
) -> None:
    """Run a MERGE template from sql/ with `source` bound, as a temporary view, to a marker."""
    view = f"vision_batch_source_{os.getpid()}_{random.randrange(1 << 30)}"
    source.createOrReplaceTempView(view)
    try:
        _with_retries(
            lambda: spark.sql(sql_text(template), args={**tables, source_marker: view})
        )
    finally:
        spark.catalog.dropTempView(view)


def _create(spark: SparkSession, captions: str, runs: str) -> None:
    spark.sql(sql_text("create_captions.sql"), args={"table": captions})
    spark.sql(sql_text("create_runs.sql"), args={"runs_table": runs})


def ddl_schema(ddl_file: str) -> StructType:
    """The columns a CREATE TABLE file in sql/ declares (needs an active Spark session)."""
    text = sql_text(ddl_file)
    start = text.index("(", text.index(")", text.index("IDENTIFIER("))) + 1
    return _parse_datatype_string(text[start: text.rindex(") USING DELTA")])


def _add_missing_columns(spark: SparkSession, table: str, ddl_file: str) -> None:
    """Bring a table made by an older version up to the DDL: an empty append that evolves
    the schema adds the new (nullable) columns; no SQL text is assembled."""
    declared = ddl_schema(ddl_file)
    if set(declared.names) - set(spark.table(table).columns):
        empty = spark.createDataFrame([], declared)
        empty.write.format("delta").mode("append").option("mergeSchema", "true").saveAsTable(
            table
        )


def _delta_path(location: str) -> str:
    return "delta.`" + location.replace("`", "``") + "`"


def _absolute(table: str) -> str:
    if "://" in table or table.startswith("dbfs:") or table.startswith("file:"):
        return table
    return os.path.abspath(table)


def _register(spark: SparkSession, name: str, location: str) -> None:
    if not spark.catalog.tableExists(name):
        spark.catalog.createTable(name, path=location, source="delta")


def _check_not_foreign(spark: SparkSession, location: str) -> None:
    """Refuse a folder that holds something other than a Delta table."""
    from delta.tables import DeltaTable

    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(location)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(hpath):
        return
    if not fs.getFileStatus(hpath).isDirectory():
        raise TableError(f"--table {location} is a file, not a Delta table folder")
    names = {status.getPath().getName() for status in fs.listStatus(hpath)}
    # A `_delta_log` without a commit yet is a table another run is creating right now.
    if names and "_delta_log" not in names and not DeltaTable.isDeltaTable(spark, location):
        raise TableError(f"--table {location} holds files but is not a Delta table")


def _with_retries(action):
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == MAX_COMMIT_ATTEMPTS or not any(m in str(exc) for m in _CONFLICTS):
                raise
            time.sleep(random.uniform(0, 0.2 * 2**attempt))
