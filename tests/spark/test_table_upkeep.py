"""What keeps a batch as cheap late in a long run as early (pipeline/tables/sink.py): a MERGE
reads only the files of its batch's path range, and every table is auto-compacted, a table
made by an older version too."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pytest
from pyspark.sql import functions as F

from pipeline.resources import sql_text
from pipeline.tables import sink

# Longer than the 32 characters of a string Delta keeps in its statistics by default, as the
# paths under a Unity Catalog volume are.
PREFIX = "file:/Volumes/main/media/photos/camera-01/"


def rows(first: int, status: str = "ok") -> list[dict]:
    return [{"path": f"{PREFIX}{first + i:06}.jpg", "endpoint": "e", "prompt_id": "p",
             "status": status, "content_sha256": f"{first + i:064}"} for i in range(3)]


@pytest.mark.parametrize("new", [True, False], ids=["insert-only", "full"])
def test_a_batch_merge_reads_only_the_files_of_its_path_range(spark, tmp_path, new) -> None:
    tables = sink.resolve(spark, str(tmp_path / "captions"))
    for first in (100, 200, 300):  # three batches, a file each
        sink.merge_captions(spark, tables, rows(first), new=True)
    held = spark.table(tables.captions).filter(F.col("path") == f"{PREFIX}000100.jpg")
    oldest = held.select(F.input_file_name()).first()[0]
    os.remove(urlparse(oldest).path)  # gone behind Delta's back: a scan of it fails
    with pytest.raises(Exception, match="(?i)not.*exist|FileNotFound"):
        spark.table(tables.captions).collect()

    batch = rows(300, "failed") + rows(303)  # three rows it has (kept: ok), three new
    sink.merge_captions(spark, tables, batch, new=new)  # never opens the file of 100-102

    merged = (spark.table(tables.captions).filter(F.col("path") >= f"{PREFIX}000200.jpg")
              .select("path", "status").collect())
    assert sorted((r["path"][-10:], r["status"]) for r in merged) == [
        (f"{n:06}.jpg", "ok") for n in (200, 201, 202, 300, 301, 302, 303, 304, 305)]


def test_the_tables_are_auto_compacted_and_an_older_one_is_brought_up_to_it(
    spark, tmp_path
) -> None:
    tables = sink.resolve(spark, str(tmp_path / "captions"))
    # The claims table as its DDL was before: no compaction, no log retention.
    old = sql_text("create_claims.sql")
    for key in sink.UPKEEP:
        old = old.replace(f"'{key}' = '{sink.ddl_properties('create_claims.sql')[key]}',", "")
    assert not set(sink.UPKEEP) & set(sink.properties_in(old))
    spark.sql(old, args={"claims_table": f"delta.`{tables.sibling('_claims')}`"})
    sink.ensure_runs(spark, tables)
    sink.ensure_groups(spark, tables)
    sink.ensure_claims(spark, tables)

    for name in (tables.captions, tables.runs, tables.groups, tables.claims):
        found = {r["key"]: r["value"] for r in spark.sql(
            "SHOW TBLPROPERTIES IDENTIFIER(:t)", args={"t": name}).collect()}
        assert found.get("delta.autoOptimize.autoCompact") == "true", name
    assert found.get("delta.logRetentionDuration") == "interval 2 days"  # the claims table
