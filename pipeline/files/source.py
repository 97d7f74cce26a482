"""Listing files with Spark's binaryFile source: metadata first, bytes only when needed.

binaryFile opens a file only when `content` is selected, so the listing (path, length,
modificationTime) never reads a byte. Contents are then read per batch from the explicit
paths of that batch, after the length gate and the skip of finished files.

Spark's file scan drops zero-length files without a word. They are found again by plain
Python wherever the input has an os path: on the driver for a small local folder, else on
the executors, one task per batch of folders (Unity Catalog volumes are mounted there). Only
the empty files themselves come to the driver, as rows to add to the listing. Nothing
reaches into the JVM.

Symbolic links are not followed, and a link is never listed: each file is captioned once,
under its real path, and a loop (`sub/up -> ..`) cannot multiply the listing. Spark's scan
would follow them, so a local folder that holds links is listed by the driver instead, and
the progress output names the links skipped. (Volumes and object stores have no links.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.errors import RunError
from pipeline.files import localfs
from pipeline.spark import analyze, in_worker

METADATA = ("path", "length", "modificationTime")
_FOUND = "path STRING, mtime_ms BIGINT"  # an empty file, with its time as Hadoop gives it
_PARENT = r"^(.*)/[^/]*$"

# A local folder with at most this many files is searched for empty files by the driver
# itself, in well under a second; a larger one, or a volume, by the executors.
DRIVER_WALK_LIMIT = 20_000

# Characters Hadoop's path globbing treats as patterns; file names may contain them.
_GLOB = re.compile(r"([\\\[\]{}*?])")


class InputError(RunError):
    """The input cannot be listed (missing, empty, unreadable); one line for the user."""


@dataclass(frozen=True)
class Listing:
    files: DataFrame  # path, length, modificationTime of every file, empty ones included
    note: str | None = None  # what the listing could not see, for the progress output


def escape_glob(path: str) -> str:
    return _GLOB.sub(r"\\\1", path)


def list_files(spark: SparkSession, input_path: str) -> Listing:
    """Every file under `input_path`, recursively: path, length, modificationTime."""
    root = localfs.os_path(input_path)
    if localfs.spark_prefix(input_path) == "file:" and root and os.path.isdir(root):
        # Before Spark's scan, which would follow the links (into a loop, without end).
        links = [path for path, is_link in localfs.walk(root) if is_link]
        if links:
            kept = [path for path, is_link in localfs.walk(root) if not is_link]
            return Listing(_listed(spark, "file:", kept), _skipped(input_path, root, links))
    try:
        files = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(escape_glob(input_path))
        )
        analyze(files)  # a missing folder fails here
    except Exception as exc:
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
            raise InputError(f"--input {input_path} does not exist") from None
        raise
    scanned = files.select(*METADATA)
    if root is None:
        return Listing(scanned, f"zero-length files under {input_path} cannot be listed there "
                                "(Spark skips them) and get no row")
    # Found once, now: the plan reads the listing twice (to count, then to stream).
    prefix = localfs.spark_prefix(input_path)
    empty = _walk(prefix, root, DRIVER_WALK_LIMIT) if prefix == "file:" else None
    if empty is None:
        empty = [(r["path"], r["mtime_ms"]) for r in
                 _empty_files(spark, scanned, input_path, root).collect()]
    if not empty:
        return Listing(scanned)
    return Listing(scanned.unionByName(spark.createDataFrame(empty, _FOUND).select(
        "path", F.lit(0).cast("long").alias("length"),
        F.timestamp_millis("mtime_ms").alias("modificationTime"))))


def _listed(spark: SparkSession, prefix: str, paths: list[str]) -> DataFrame:
    """The listing of a folder with links, by the driver: path, length, modificationTime,
    as Spark's scan gives them (times in milliseconds), empty files included."""
    rows = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:  # gone since the walk
            continue
        rows.append((prefix + path, stat.st_size, stat.st_mtime_ns // 1_000_000))
    frame = pd.DataFrame(rows, columns=["path", "length", "mtime_ms"])
    return spark.createDataFrame(frame, "path STRING, length BIGINT, mtime_ms BIGINT").select(
        "path", "length", F.timestamp_millis("mtime_ms").alias("modificationTime"))


def _skipped(input_path: str, root: str, links: list[str]) -> str:
    shown = ", ".join(os.path.relpath(link, root) for link in sorted(links)[:3])
    more = f" and {len(links) - 3} more" if len(links) > 3 else ""
    return (f"{len(links)} symbolic link(s) under {input_path} skipped, not followed (a file "
            f"is captioned once, under its real path): {shown}{more}")


def _empty_files(spark: SparkSession, scanned: DataFrame, input_path: str,
                 root: str) -> DataFrame:
    """The zero-length files under the input: each folder on the way to a listed file is
    read once (one Python task per batch of folders), and a sub-folder that holds no listed
    file at any depth is walked whole, in the same task."""
    top = localfs.spark_prefix(input_path) + root
    # The folders between the input and each listed file: top/a, top/a/b for top/a/b/x.jpg,
    # each as (its parent, itself) and (itself, nothing): one pass over the listing.
    parent = F.regexp_extract("path", _PARENT, 1)
    parts = F.split(F.substring(parent, len(top) + 2, 1 << 20), "/")
    chain = F.transform(
        F.sequence(F.lit(1), F.size(parts)),
        lambda i: F.concat(F.lit(top + "/"), F.array_join(F.slice(parts, 1, i), "/")))
    pairs = F.flatten(F.transform(chain, lambda folder: F.array(
        F.struct(F.regexp_extract(folder, _PARENT, 1).alias("dir"), folder.alias("child")),
        F.struct(folder.alias("dir"), F.lit(None).cast("string").alias("child")))))
    none = F.array().cast("array<struct<dir:string,child:string>>")
    folders = scanned.select(F.explode(F.when(parent == top, none).otherwise(pairs)).alias("f"))
    start = spark.createDataFrame([(top, None)], "dir STRING, child STRING")
    # Every folder on the way, with its sub-folders that lead to a listed file.
    by_folder = (folders.select("f.dir", "f.child").unionByName(start).groupBy("dir")
                 .agg(F.collect_set("child").alias("children")))
    return by_folder.mapInPandas(_scan_folders, _FOUND)


def _scan_folders(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Per folder: its empty files, and every empty file under its sub-folders that lead to
    no listed file (those hold only empty or hidden files)."""
    in_worker()
    for frame in frames:
        rows: list[tuple[str, int]] = []
        for spark_dir, children in zip(frame["dir"], frame["children"], strict=True):
            prefix, local = localfs.spark_prefix(spark_dir), localfs.os_path(spark_dir)
            if local is None:
                continue
            leads = {localfs.os_path(c) for c in children}
            if os.path.isfile(local):  # --input named one file
                rows += _if_empty(prefix, local)
                continue
            try:
                entries = list(os.scandir(local))
            except OSError:  # gone since the listing, or unreadable: Spark said what it saw
                continue
            for entry in entries:
                if localfs.hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if entry.path not in leads:
                        rows += _walk(prefix, entry.path) or []
                elif entry.is_file(follow_symlinks=False):
                    rows += _if_empty(prefix, entry.path)
        yield pd.DataFrame(rows, columns=["path", "mtime_ms"])


def _walk(prefix: str, top: str, limit: int | None = None) -> list[tuple[str, int]] | None:
    """Every empty file under `top` (or `top` itself), hidden names skipped as Spark skips
    them; None once more than `limit` files were looked at."""
    if os.path.isfile(top):
        return _if_empty(prefix, top)
    rows: list[tuple[str, int]] = []
    for seen, (path, is_link) in enumerate(localfs.walk(top), 1):
        if limit is not None and seen > limit:
            return None
        if not is_link:
            rows += _if_empty(prefix, path)
    return rows


def _if_empty(prefix: str, path: str) -> list[tuple[str, int]]:
    try:
        stat = os.stat(path)
    except OSError:
        return []
    return [(prefix + path, stat.st_mtime_ns // 1_000_000)] if stat.st_size == 0 else []


def read_contents(spark: SparkSession, paths: list[str]) -> DataFrame:
    """path, length, modificationTime, content of exactly these files."""
    return (
        spark.read.format("binaryFile")
        .load([escape_glob(p) for p in paths])
        .select(*METADATA, "content")
    )
