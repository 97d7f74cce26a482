"""The prepare stage, the same for every path: refuse what the length (or the path) already
condemns without reading it, read and prepare the rest on the executors, and keep the
prepared images there until they are asked about.

The driver gets each file's prepared facts (format, sizes, SHA-256, error class) but never
the image bytes: those stay in Spark's cache (`held`) until the caller is done with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.files import source
from pipeline.images.prepare import Rejected, check_length
from pipeline.runs.context import RunContext
from pipeline.runs.plan import Batch, Entry
from pipeline.runs.udfs import prepare_udf
from pipeline.spark import parallelism


@dataclass
class Prepared:
    batch: Batch
    refused: dict[str, Rejected]  # by path: never read
    facts: dict[str, dict[str, Any]]  # by path: the PREPARED fields but the image
    held: DataFrame | None  # path + PREPARED of the files read, cached until asked
    known: dict[str, dict[str, Any]] = field(default_factory=dict)  # answers found by SHA-256

    def __post_init__(self) -> None:
        self._cached = self.held  # what `release` drops, however `held` is narrowed
        self._entries: dict[str, Entry] | None = None

    def entry(self, path: str) -> Entry:
        """The batch's entry of `path`."""
        if self._entries is None:
            self._entries = {e.path: e for e in self.batch.entries}
        return self._entries[path]

    def valid(self) -> list[dict[str, Any]]:
        """Facts of the files that can be sent, in batch order."""
        return [f for e in self.batch.entries
                if (f := self.facts.get(e.path)) is not None and f["error_class"] is None]

    def held_for(self, paths: set[str]) -> DataFrame:
        """The held rows of `paths` (valid files of this batch). A filter, not a join: a
        join with the paths costs a broadcast job of its own (a second before the first
        image streams, in a fresh JVM). The filter names whichever list is shorter, those
        asked or those left out; usually nothing is left out but the invalid files."""
        assert self.held is not None
        valid = {f["path"] for f in self.valid()}
        left_out = valid - paths
        held = self.held.filter(F.col("error_class").isNull())
        if len(left_out) <= len(paths):
            return held.filter(~F.col("path").isin(sorted(left_out))) if left_out else held
        return held.filter(F.col("path").isin(sorted(paths)))

    def narrow(self, units: set[str]) -> None:
        """Keep only the files of `units` (those this run's claim holds): the others are
        another run's to ask, and get no row here."""
        kept = tuple(e for e in self.batch.entries if e.unit in units)
        if len(kept) == len(self.batch.entries):
            return
        paths = {e.path for e in kept}
        self.batch = replace(self.batch, entries=kept, claim=None)
        self._entries = None
        self.refused = {p: r for p, r in self.refused.items() if p in paths}
        self.facts = {p: f for p, f in self.facts.items() if p in paths}
        if self.held is not None:
            self.held = self.held.filter(F.col("path").isin(sorted(paths)))

    def release(self) -> None:
        """Drop the cached images: they were asked about (or never will be)."""
        if self._cached is not None:
            self._cached.unpersist()
        self.held = self._cached = None


def prepare(spark: SparkSession, ctx: RunContext, batch: Batch,
            refused: dict[str, Rejected] | None = None) -> Prepared:
    """One batch prepared. `refused` holds files already judged invalid by path; like files
    refused by their length, their bytes are never read."""
    bounds = ctx.catalog.input
    judged: dict[str, Rejected] = {}
    readable: list[str] = []
    for entry in batch.entries:
        rejected = (refused or {}).get(entry.path) or check_length(entry.length, bounds)
        if rejected:
            judged[entry.path] = rejected
        else:
            readable.append(entry.path)
    if not readable:
        return Prepared(batch, judged, {}, None)
    udf = prepare_udf(ctx.family, bounds, ctx.image_budget)
    held = (
        # One task per slot, not one per few files: each Python task has a fixed cost
        # (PySpark re-reads its import paths for every task), and a batch is not big.
        source.read_contents(spark, readable).coalesce(parallelism(spark))
        .select("path", "length", F.unix_micros("modificationTime").alias("modified_us"),
                udf("content").alias("p"))
        .select("path", "length", "modified_us", "p.*")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    # One job: prepares every image once (filling the cache) and brings back their facts.
    facts = {r["path"]: r.asDict() for r in held.drop("image").collect()}
    return Prepared(batch, judged, facts, held)
