"""Incremental runs: changed files are redone, old tables keep working."""

from __future__ import annotations

import os

from pipeline import runs as runner
from pipeline.resources import sql_text
from pipeline.tables import sink
from tests import files


def rows_by_name(spark, cfg) -> dict:
    return {r.path.rsplit("/", 1)[-1]: r for r in
            spark.read.format("delta").load(cfg.table).collect()}


def test_only_the_file_whose_bytes_changed_is_redone(spark, serve, run_config, tmp_path) -> None:
    folder = files.write_photos(tmp_path / "in", 5, "img{}.jpg", lambda i: (40 + i, 30))
    endpoint, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    before = rows_by_name(spark, cfg)

    changed = folder / "img2.jpg"
    changed.write_bytes(files.jpeg(99, 77))
    stat = changed.stat()
    os.utime(changed, (stat.st_atime, stat.st_mtime + 5))
    second = runner.run(cfg, creds, spark, progress=lambda _: None)
    after = rows_by_name(spark, cfg)

    assert (second.skipped, second.written) == (4, 1)
    assert endpoint.stats()["requests"] == 6
    assert "99x77 pixels" in after["img2.jpg"].caption
    assert after["img2.jpg"].content_sha256 != before["img2.jpg"].content_sha256
    for name in ("img0.jpg", "img1.jpg", "img3.jpg", "img4.jpg"):
        assert after[name].asDict() == before[name].asDict()
    assert len(after) == 5


def test_a_table_created_by_an_older_version_gains_new_columns(
    spark, serve, run_config, tmp_path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(files.jpeg())
    cfg = run_config(folder)
    # The DDL as it was before `reused_from` and the table mark existed.
    old_ddl = sql_text("create_captions.sql").replace(
        ",\n  reused_from STRING COMMENT 'path whose answer (same bytes) this row took without"
        " a request'", "").replace(",\n  'vision_batch.schema_version' = '1'", "")
    assert "reused_from" not in old_ddl and f"'{sink.MARK}' =" not in old_ddl
    spark.sql(old_ddl, args={"table": f"delta.`{cfg.table}`"})
    # ...and its runs table, as it was before `exit_code`.
    runs_ddl = "\n".join(line for line in sql_text("create_runs.sql").splitlines()
                         if not line.startswith("  exit_code INT"))
    spark.sql(runs_ddl, args={"runs_table": f"delta.`{cfg.table}_runs`"})
    _, creds = serve()
    runner.run(cfg, creds, spark, progress=lambda _: None)
    table = spark.read.format("delta").load(cfg.table)
    assert "reused_from" in table.columns
    [run] = spark.read.format("delta").load(cfg.table + "_runs").collect()
    assert run.exit_code == 0
    assert [r.status for r in table.collect()] == ["ok"]
    properties = spark.sql(f"SHOW TBLPROPERTIES delta.`{cfg.table}`").collect()
    assert (sink.MARK, "1") in {(r["key"], r["value"]) for r in properties}  # ours, marked now


def test_the_runs_table_records_each_run(spark, serve, run_config, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(files.jpeg())
    (folder / "b.txt").write_bytes(b"text")
    _, creds = serve()
    cfg = run_config(folder)
    first = runner.run(cfg, creds, spark, progress=lambda _: None)
    second = runner.run(cfg, creds, spark, progress=lambda _: None)
    runs = {r.run_id: r for r in spark.read.format("delta").load(cfg.table + "_runs").collect()}
    one, two = runs[first.run_id], runs[second.run_id]
    assert (one.status, one.listed, one.skipped, one.ok, one.invalid, one.requests) == (
        "succeeded", 2, 0, 1, 1, 1)
    assert (two.status, two.skipped, two.ok, two.requests) == ("succeeded", 2, 0, 0)
    assert one.started_at <= one.ended_at <= two.started_at
    assert one.total_tokens > 0 and one.latency_p50_ms is not None and one.images_per_s > 0
