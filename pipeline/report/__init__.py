"""`vision-batch report`: one self-contained HTML page about a captions table and its runs.

Pure functions build the page from plain Python data: row dicts, runs rows, thumbnail bytes.
Spark appears only at the edge (`write_report` and the helpers after it): it streams the few
narrow columns every row contributes to the figures and charts, fetches the full rows of the
sampled gallery, and makes the thumbnails on executors, so only small JPEGs reach the driver.

The page loads nothing: charts are inline SVG drawn here, thumbnails are data: URIs, and the
one script (the status filter) is inline. Captions and error messages are untrusted text, so
every value is escaped with html.escape, the script never writes HTML, and a
Content-Security-Policy allows only our own style and script (by hash) and data: images: a
caption that slipped past escaping still could neither run nor fetch anything.

The pure parts live in modules named after what they hold: totals (tallying every row, costs),
sampling (the gallery's sample), thumbnails, charts (inline SVG) and page (the HTML document,
`render_report`). This module is the Spark edge, and re-exports what callers use. Its edge
functions import PySpark and the table modules themselves (not to dodge a cycle: there is
none), so importing the package for the pure page costs no PySpark import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.images.limits import Catalog, InputBounds, load_catalog
from pipeline.report import compare, page
from pipeline.report.page import Page, Scope, render_report
from pipeline.report.sampling import MAX_THUMBNAILS, RowKey, tally
from pipeline.report.thumbnails import NOT_READ, Preview, preview
from pipeline.report.totals import utc

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["MAX_THUMBNAILS", "Page", "Preview", "Scope", "Written", "gallery_rows",
           "read_previews", "read_runs", "render_report", "write_compare", "write_report"]

# What every row contributes to the figures and charts: no caption, no bytes.
TALLY_COLUMNS = ("path", "endpoint", "prompt_id", "status", "error_class", "attempts",
                 "prompt_tokens", "completion_tokens", "total_tokens", "estimated_image_tokens",
                 "latency_ms")
GALLERY_COLUMNS = ("path", "endpoint", "prompt_id", "status", "error_class", "error_message",
                   "caption", "format", "width", "height", "size_bytes", "content_sha256",
                   "attempts", "latency_ms", "total_tokens", "reused_from", "group_key")


@dataclass(frozen=True)
class Written:
    path: Path
    bytes: int
    page: Page


def write_report(spark: SparkSession, table: str, out: str | Path, *,
                 run_id: str | None = None, max_thumbnails: int = MAX_THUMBNAILS,
                 catalog: Catalog | None = None) -> Written:
    """Read the captions table and its runs table, and write the page to `out`."""
    from pyspark.sql import functions as F

    from pipeline.tables import sink

    if max_thumbnails < 1:
        raise ValueError(f"max_thumbnails must be at least 1, not {max_thumbnails}")
    tables = sink.find(spark, table)
    if tables is None:
        raise sink.TableError(f"--table {table}: no captions table there")
    catalog = catalog or load_catalog()
    captions = spark.table(tables.captions)
    runs = read_runs(spark, tables.runs)
    if run_id is not None:
        captions = captions.filter(F.col("run_id") == run_id)
        if all(r.get("run_id") != run_id for r in runs) and not captions.limit(1).count():
            raise sink.TableError(f"--run-id {run_id}: no such run in {tables.display}")
    totals, chosen = tally(_stream(captions), max_thumbnails)
    rows = gallery_rows(spark, captions, chosen)
    previews = read_previews(spark, rows, catalog.input)
    scope = Scope(tables.display, run_id, datetime.now(timezone.utc))
    result = page.page(totals, rows, previews, runs, scope, catalog)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = result.html.encode("utf-8")
    target.write_bytes(data)
    return Written(target, len(data), result)


@dataclass(frozen=True)
class Compared:
    path: Path
    bytes: int
    pairs: list[compare.Pair]
    images: int  # shown in the grid


def write_compare(spark: SparkSession, table: str, out: str | Path,
                  pairs: list[str] | None = None, *, max_images: int = compare.MAX_IMAGES,
                  catalog: Catalog | None = None) -> Compared:
    """Read the captions table (rows in path order) and its runs, and write the compare page
    for `pairs` ("ENDPOINT:PROMPT_ID"; default: every pair in the table) to `out`."""
    from pyspark.sql import functions as F

    from pipeline.tables import sink

    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, not {max_images}")
    wanted = [compare.Pair.parse(p) for p in pairs or ()]
    tables = sink.find(spark, table)
    if tables is None:
        raise sink.TableError(f"--table {table}: no captions table there")
    catalog = catalog or load_catalog()
    captions = spark.table(tables.captions)
    present = sorted(compare.Pair(r["endpoint"], r["prompt_id"])
                     for r in captions.select("endpoint", "prompt_id").distinct().collect())
    missing = [p for p in wanted if p not in present]
    if missing or not present:
        known = ", ".join(p.label for p in present) or "none"
        what = f"--pair {missing[0].label} is not" if missing else "no pair is"
        raise sink.TableError(f"{what} in {tables.display}; its pairs: {known}")
    chosen = wanted or present
    keys = spark.createDataFrame([(p.endpoint, p.prompt_id) for p in chosen],
                                 "endpoint STRING, prompt_id STRING")
    rows = (captions.join(keys, ["endpoint", "prompt_id"], "left_semi")
            .select(*compare.COLUMNS).orderBy("path"))
    runs = []
    if spark.catalog.tableExists(tables.runs):
        runs = [r.asDict() for r in spark.table(tables.runs).select(
            "prompt_id", "config_json", F.col("started_at").cast("double").alias("started_at"))
            .collect()]
    first = (rows.select("path").distinct().orderBy("path").limit(max_images)
             .select("path", F.lit(None).cast("string").alias("error_class")))
    previews = read_previews(spark, [r.asDict() for r in first.collect()], catalog.input)
    html = compare.render_compare((r.asDict() for r in rows.toLocalIterator()), chosen, runs,
                                  previews, catalog, tables.display, max_images)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = html.encode("utf-8")
    target.write_bytes(data)
    return Compared(target, len(data), chosen, min(max_images, len(previews)))


def read_runs(spark: SparkSession, runs_table: str) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F

    if not spark.catalog.tableExists(runs_table):
        return []
    runs = spark.table(runs_table).drop("config_json")
    # As epoch seconds: Python's own time zone never shifts what the page says is UTC.
    for name in ("started_at", "ended_at"):
        runs = runs.withColumn(name, F.col(name).cast("double"))
    rows = [r.asDict() for r in runs.collect()]
    for r in rows:
        for name in ("started_at", "ended_at"):
            if r[name] is not None:
                r[name] = utc(r[name])
    return rows


def _stream(captions: DataFrame) -> Iterator[dict[str, Any]]:
    """Every row's narrow columns, a partition at a time: the driver never holds them all."""
    from pyspark.sql import functions as F

    # request_share is optional: tables written before it have attempts only.
    share = (F.col("request_share") if "request_share" in captions.columns
             else F.lit(None).cast("double")).alias("request_share")
    # finish_reason too: tables written before #27 have none.
    finish = (F.col("finish_reason") if "finish_reason" in captions.columns
              else F.lit(None).cast("string")).alias("finish_reason")
    narrow = captions.select(*TALLY_COLUMNS, share, finish, F.col("processed_at")
                             .cast("double").alias("processed_at"))
    for row in narrow.toLocalIterator():
        yield row.asDict()


def gallery_rows(spark: SparkSession, captions: DataFrame,
                 chosen: set[RowKey]) -> list[dict[str, Any]]:
    if not chosen:
        return []
    keys = spark.createDataFrame(sorted(chosen), "path STRING, endpoint STRING, prompt_id STRING")
    present = [c for c in GALLERY_COLUMNS if c in captions.columns]  # group_key is optional
    picked = captions.join(keys, ["path", "endpoint", "prompt_id"], "left_semi")
    return [r.asDict() for r in picked.select(*present).collect()]


def read_previews(spark: SparkSession, rows: Sequence[Mapping[str, Any]],
                  bounds: InputBounds) -> dict[str, Preview]:
    """Thumbnails made on executors from the files as they are now; a file gone is
    "file not found", never an error."""
    from pyspark.sql.functions import pandas_udf

    paths = sorted({str(r["path"]) for r in rows if r.get("error_class") not in NOT_READ
                    and (r.get("size_bytes") or 0) <= bounds.max_file_bytes})
    if not paths:
        return {}
    max_pixels = bounds.max_pixels

    # PySpark's stubs type only the functionType forms, not a return type with type hints.
    @pandas_udf("jpeg BINARY, sha256 STRING")  # type: ignore[call-overload]
    def previews(contents: pd.Series) -> pd.DataFrame:
        made = [preview(bytes(c), max_pixels) for c in contents]
        return pd.DataFrame({"jpeg": [m.jpeg for m in made], "sha256": [m.sha256 for m in made]})

    found: dict[str, Preview] = {p: Preview(None, None, "file not found") for p in paths}
    contents = _read_existing(spark, paths)
    if contents is None:
        return found
    with _conf(spark, "spark.sql.files.ignoreMissingFiles", "true"):  # deleted since listing
        made = contents.select("path", previews("content").alias("p")).collect()
    for row in made:
        jpeg = row["p"]["jpeg"]
        found[row["path"]] = Preview(
            bytes(jpeg) if jpeg is not None else None, row["p"]["sha256"],
            None if jpeg is not None else "no preview: the file does not decode")
    return found


def _read_existing(spark: SparkSession, paths: list[str]) -> DataFrame | None:
    """read_contents over the paths that still exist: checked with the os where the files
    have an os path, else by asking Spark about each (paid only when some file has gone)."""
    from pipeline.files import localfs, source
    from pipeline.spark import analyze

    def exists(path: str) -> bool:
        local = localfs.os_path(path)
        if local is not None:
            return os.path.isfile(local)
        try:
            analyze(spark.read.format("binaryFile").load(source.escape_glob(path)))
            return True
        except Exception as exc:
            if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
                return False
            raise

    local = [p for p in paths if localfs.os_path(p) is not None]
    remote = [p for p in paths if localfs.os_path(p) is None]
    present = [p for p in local if exists(p)]
    if remote:
        try:
            analyze(source.read_contents(spark, remote))
            present += remote
        except Exception:
            present += [p for p in remote if exists(p)]
    return source.read_contents(spark, present) if present else None


@contextmanager
def _conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
