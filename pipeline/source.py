"""Listing files with Spark's binaryFile source: metadata first, bytes only when needed.

binaryFile opens a file only when `content` is selected, so the listing (path, length,
modificationTime) never reads a byte. Contents are then read per batch from the explicit
paths of that batch, after the length gate and the skip of finished files.
"""

from __future__ import annotations

import re

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
    return files.select(*METADATA)


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
