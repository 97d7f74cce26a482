"""Planning: list the input, skip what is done for this endpoint and prompt, and cut the rest
into batches.

Every step is parallel: the listing and the table meet in one join, one aggregate counts
them, and what is left streams to the driver sorted (range-partitioned by path, then sorted
within each partition), where it is cut into batches as it arrives. Nothing numbers the
files in one partition, and the driver holds one batch of metadata at a time (and the
partition it is reading). A run with nothing to do stops after the count: one read of the
table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from pipeline.config import RunConfig
from pipeline.endpoint import groups
from pipeline.files.source import InputError, Listing
from pipeline.outcomes import DONE, ErrorClass, Status
from pipeline.runs.context import RunContext

# Range partitions of the stream; each holds about one batch, so the driver reads one at a
# time. Capped so a plan of a hundred million files does not make a million tiny tasks.
MAX_STREAM_PARTITIONS = 10_000


@dataclass(frozen=True)
class Entry:
    """One file to process, as listed."""

    path: str
    length: int
    modified_us: int  # modificationTime in epoch microseconds: an exact round trip
    known: bool  # the table already holds a row for it (this endpoint and prompt)
    group_key: str | None = None
    fingerprint: str | None = None  # of its group

    @property
    def unit(self) -> str:
        """What is asked, claimed and put off as one: its group (asked whole), or the file."""
        return f"group:{self.group_key}" if self.group_key is not None else self.path


@dataclass(frozen=True)
class Batch:
    number: int  # from 1
    entries: tuple[Entry, ...]
    # The units of the batch this run holds, once its claim is decided (pipeline/runs/
    # claims.py): the first chunk's batches are prepared while it is written. None: all.
    claim: Future[set[str]] | None = field(default=None, compare=False)

    @property
    def new(self) -> bool:
        """No file of the batch had a row when the run was planned."""
        return not any(e.known for e in self.entries)


@dataclass
class Plan:
    listed: int
    skipped: int
    batches: int
    stream: Iterator[Batch]
    approximate: bool = False  # the batch count is an estimate (whole groups per batch)
    groups: int | None = None
    note: str | None = None
    answers: bool = True  # the table holds `ok` answers to reuse (else no need to look)

    @property
    def pending(self) -> int:
        return self.listed - self.skipped


def _rows_here(spark: SparkSession, ctx: RunContext) -> DataFrame | None:
    """This endpoint and prompt's rows of the captions table, one per path; None when there
    is no table, or this run has just created it (and so it holds no row to read)."""
    if ctx.tables is None or ctx.tables.created:
        return None
    return (spark.table(ctx.tables.captions).filter(ctx.asked_here)
            .select("path", "size_bytes", "modified_at", "status", "error_class"))


def sampled(files: DataFrame, config: RunConfig, unit: Column) -> DataFrame:
    """The files of the run's sample (`--sample N`, `--sample-fraction F`), or all of them.

    A unit's place is a hash of the unit (a path, or a group's key) and `--sample-seed`, so
    every endpoint and prompt gets the same files, a larger sample holds a smaller one, a
    rerun asks the same files, and a group is in or out whole.
    """
    if config.sample_fraction is not None:  # the hash is a signed 64-bit value: [0, 1)
        place = F.xxhash64(F.lit(config.sample_seed), unit)
        return files.filter((place.cast("double") + 2.0**63) / 2.0**64
                            < config.sample_fraction)
    if config.sample is None:
        return files
    keyed = files.withColumn("_unit", unit)
    chosen = (keyed.select("_unit").distinct()
              .orderBy(F.xxhash64(F.lit(config.sample_seed), "_unit"), "_unit")
              .limit(config.sample))
    return keyed.join(chosen, "_unit", "left_semi").drop("_unit")


def sampling(config: RunConfig) -> str:
    """How the planned line names the sample ('' for the whole input)."""
    if config.sample is not None:
        return f", a sample of {config.sample} (seed {config.sample_seed})"
    if config.sample_fraction is not None:
        return f", a sample of {config.sample_fraction:g} (seed {config.sample_seed})"
    return ""


def _with_table(files: DataFrame, rows: DataFrame | None) -> DataFrame:
    """The listing with `done` (an ok or invalid row for the same size and time) and `known`
    (any row at all, so the MERGE has something to update)."""
    if rows is None:
        return files.select("*", F.lit(False).alias("done"), F.lit(False).alias("known"),
                            F.lit(None).cast("string").alias("error_class"))
    joined = files.join(rows, "path", "left")
    done = (F.col("status").isin(*DONE) & (F.col("size_bytes") == F.col("length"))
            & (F.col("modified_at") == F.col("modificationTime")))
    return joined.select("path", "length", "modificationTime",
                         F.coalesce(done, F.lit(False)).alias("done"),
                         F.col("status").isNotNull().alias("known"), "error_class")


def _counted(joined: DataFrame, input_path: str) -> tuple[int, int]:
    counts = joined.agg(F.count(F.lit(1)).alias("listed"),
                        F.sum(F.col("done").cast("long")).alias("done")).first()
    if counts is None or int(counts["listed"]) == 0:
        raise InputError(f"--input {input_path} holds no files")
    return int(counts["listed"]), int(counts["done"] or 0)


def files(spark: SparkSession, ctx: RunContext, listing: Listing) -> Plan:
    """Single files (alone or packed): batches of max_files_per_batch files, by path."""
    chosen = sampled(listing.files, ctx.config, F.col("path"))
    joined = _with_table(chosen, _rows_here(spark, ctx))
    listed, skipped = _counted(joined, ctx.config.input or "")
    pending, size = listed - skipped, ctx.config.max_files_per_batch
    todo = joined.filter(~F.col("done")).select(
        "path", "length", F.unix_micros("modificationTime").alias("modified_us"), "known")
    stream = cut(_stream(todo, [F.col("path")], pending, size), size, lambda e: e.path)
    return Plan(listed, skipped, math.ceil(pending / size), stream, note=listing.note,
                answers=pending > 0 and _has_answers(spark, ctx))


def _has_answers(spark: SparkSession, ctx: RunContext) -> bool:
    """Whether any file (listed here or not) has an `ok` answer for this endpoint and prompt:
    without one there is nothing to reuse, and batches need not look (a lookup per batch
    scans the table)."""
    rows = _rows_here(spark, ctx)
    return rows is not None and bool(rows.filter(F.col("status") == Status.OK).limit(1).count())


def grouped(spark: SparkSession, ctx: RunContext, listing: Listing) -> Plan:
    """Groups (`--group-by`): batches of whole groups, closed once they hold
    max_files_per_batch files; a group is skipped while its members are unchanged since an
    answer was recorded (its fingerprint). Files no group takes are recorded once."""
    assert ctx.tables is not None
    rule = ctx.config.group_by or ""
    key_of = F.udf(lambda path: groups.group_key(path, rule), StringType())
    # A file outside every group is sampled on its own, a group whole.
    keyed = sampled(listing.files.withColumn("group_key", key_of("path")), ctx.config,
                    F.coalesce(F.col("group_key"), F.concat(F.lit("\0"), F.col("path"))))
    stamp = F.concat_ws("|", "path", F.col("length").cast("string"),
                        F.col("modificationTime").cast("long").cast("string"))
    fingerprints = (
        keyed.filter(F.col("group_key").isNotNull())
        .groupBy("group_key")
        .agg(F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list(stamp))), 256)
             .alias("fingerprint"))
    )
    answered = spark.table(ctx.tables.groups).filter(
        ctx.asked_here & F.col("status").isin(*DONE)
    ).select("group_key", "fingerprint")
    todo_groups = fingerprints.join(answered, ["group_key", "fingerprint"], "left_anti")
    members = keyed.join(todo_groups, "group_key")
    rows = _with_table(keyed.select("path", "length", "modificationTime"),
                       _rows_here(spark, ctx))
    # A file no group takes is done once recorded as such (unchanged).
    alone = (keyed.filter(F.col("group_key").isNull())
             .join(rows.filter(F.col("done") & (F.col("error_class") == ErrorClass.NO_GROUP))
                   .select("path"), "path", "left_anti")
             .withColumn("fingerprint", F.lit(None).cast("string")))
    todo = members.unionByName(alone).join(rows.select("path", "known"), "path", "left")
    counts = todo.agg(F.count(F.lit(1)).alias("files"),
                      F.countDistinct("group_key").alias("groups")).first()
    assert counts is not None  # an aggregate without groupBy has exactly one row
    listed = keyed.count()
    if listed == 0:
        raise InputError(f"--input {ctx.config.input} holds no files")
    pending, size = int(counts["files"]), ctx.config.max_files_per_batch
    todo = todo.select("path", "length", F.unix_micros("modificationTime").alias("modified_us"),
                       F.coalesce("known", F.lit(False)).alias("known"), "group_key",
                       "fingerprint")
    order = [F.col("group_key").asc_nulls_first(), F.col("path")]
    # A file outside every group is a unit of its own; a group stays whole.
    stream = cut(_stream(todo, order, pending, size), size,
                  lambda e: e.group_key if e.group_key is not None else "\0" + e.path)
    return Plan(listed, listed - pending, max(1, math.ceil(pending / size)) if pending else 0,
                stream, approximate=True, groups=int(counts["groups"]), note=listing.note)


def _stream(todo: DataFrame, order: list[Column], pending: int,
            size: int) -> Iterator[Entry]:
    """The files left, sorted, a partition at a time."""
    if pending == 0:
        return
    parts = max(1, min(MAX_STREAM_PARTITIONS, math.ceil(pending / size)))
    ordered = todo.repartitionByRange(parts, *order).sortWithinPartitions(*order)
    fields = set(todo.columns)
    for row in ordered.toLocalIterator():
        yield Entry(row["path"], int(row["length"]), int(row["modified_us"]), bool(row["known"]),
                    row["group_key"] if "group_key" in fields else None,
                    row["fingerprint"] if "fingerprint" in fields else None)


def cut(entries: Iterable[Entry], size: int, unit_of) -> Iterator[Batch]:
    """Batches from sorted entries: a new batch starts with the first unit (file or group)
    that finds the current one holding `size` files already."""
    current: list[Entry] = []
    unit = None
    number = 0
    for entry in entries:
        this = unit_of(entry)
        if current and this != unit and len(current) >= size:
            number += 1
            yield Batch(number, tuple(current))
            current = []
        current.append(entry)
        unit = this
    if current:
        yield Batch(number + 1, tuple(current))


def still_to_do(spark: SparkSession, ctx: RunContext, entries: list[Entry],
                by_group: bool) -> list[Entry]:
    """Of planned `entries`, those the tables still hold no answer for, by the plan's rules:
    a file needs an ok or invalid row for its size and time (one outside every group: the
    row that says so); a group, an answer for its members' fingerprint. For units another
    run may have answered since this run was planned (pipeline/runs/claims.py)."""
    if not entries or ctx.tables is None:
        return list(entries)
    frame = spark.createDataFrame(
        [(e.path, e.length, e.modified_us, e.group_key, e.fingerprint) for e in entries],
        "path STRING, length BIGINT, modified_us BIGINT, group_key STRING, fingerprint STRING")
    done = set()
    files = frame.filter(F.col("group_key").isNull()) if by_group else frame
    paths = [e.path for e in entries if e.group_key is None or not by_group]
    if paths:
        rows = _rows_here(spark, replace(ctx, tables=replace(ctx.tables, created=False)))
        assert rows is not None
        listed = files.select("path", "length",
                              F.timestamp_micros("modified_us").alias("modificationTime"))
        joined = _with_table(listed, rows.filter(F.col("path").isin(paths)))
        if by_group:  # a file outside every group is done once recorded as such
            joined = joined.filter(F.col("error_class") == ErrorClass.NO_GROUP)
        done |= {r["path"] for r in joined.filter("done").select("path").collect()}
    if by_group:
        keys = sorted({e.group_key for e in entries if e.group_key is not None})
        if keys:
            answered = spark.table(ctx.tables.groups).filter(
                ctx.asked_here & F.col("status").isin(*DONE)
                & F.col("group_key").isin(keys))
            found = (frame.filter(F.col("group_key").isNotNull())
                     .join(answered, ["group_key", "fingerprint"], "left_semi")
                     .select("path").collect())
            done |= {r["path"] for r in found}
    return [e for e in entries if e.path not in done]
