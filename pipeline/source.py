"""Listing files with Spark's binaryFile source: metadata first, bytes only when needed.

binaryFile opens a file only when `content` is selected, so the listing (path, length,
modificationTime) never reads a byte. Contents are then read per batch from the explicit
paths of that batch, after the length gate and the skip of finished files.
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import unquote, urlsplit

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.limits import InputBounds

METADATA = ("path", "length", "modificationTime")

# Characters Hadoop's path globbing treats as patterns; file names may contain them.
_GLOB = re.compile(r"([\\\[\]{}*?])")


class InputError(RuntimeError):
    """The input cannot be listed (missing, empty, unreadable); one line for the user."""


def escape_glob(path: str) -> str:
    return _GLOB.sub(r"\\\1", path)


def list_files(spark: SparkSession, input_path: str) -> DataFrame:
    """Every file under `input_path`, recursively: path, length, modificationTime."""
    try:
        # load() lists eagerly, so a missing folder fails here, not mid-run.
        files = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(escape_glob(input_path))
        )
    except Exception as exc:
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
            raise InputError(f"--input {input_path} does not exist") from None
        raise
    scanned = files.select(*METADATA)
    return _with_empty_files(spark, files, scanned)


def hadoop_path(uri: str) -> str:
    """A file URI as binaryFile's `path` column spells it (Hadoop's Path.toString)."""
    parts = urlsplit(uri)
    path = unquote(parts.path)
    return f"{parts.scheme}://{parts.netloc}{path}" if parts.netloc else f"{parts.scheme}:{path}"


def _with_empty_files(spark: SparkSession, files: DataFrame, scanned: DataFrame) -> DataFrame:
    """Add the zero-length files, which Spark's file scan drops without a word.

    The file index (inputFiles) still knows them; when it holds more files than the scan
    returns, the difference gets its metadata from the file system, one status per file.
    """
    indexed = files.inputFiles()
    if len(indexed) == scanned.count():
        return scanned
    seen = spark.createDataFrame([(hadoop_path(u),) for u in indexed], "path STRING")
    missing = [r["path"] for r in seen.join(scanned, "path", "left_anti").collect()]
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    rows = []
    for path in missing:
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        status = hpath.getFileSystem(conf).getFileStatus(hpath)
        modified = datetime.fromtimestamp(status.getModificationTime() / 1000)
        rows.append((path, int(status.getLen()), modified))
    extra = spark.createDataFrame(rows, "path STRING, length BIGINT, modificationTime TIMESTAMP")
    return scanned.unionByName(extra)


def length_gate(bounds: InputBounds) -> Column:
    """The invalid class a file gets from its length alone, or NULL to read it."""
    length = F.col("length")
    return (
        F.when(length == 0, F.lit("empty_file"))
        .when(length > bounds.max_file_bytes, F.lit("too_large"))
        .otherwise(F.lit(None).cast("string"))
    )


def read_contents(spark: SparkSession, paths: list[str]) -> DataFrame:
    """path, length, modificationTime, content of exactly these files."""
    return (
        spark.read.format("binaryFile")
        .load([escape_glob(p) for p in paths])
        .select(*METADATA, "content")
    )
