"""Batches that overlap: the next one is asked while the last one is committed, from the
executors and from the driver, and still every file gets exactly one row."""

from __future__ import annotations

import pytest

from pipeline import runs as runner
from pipeline.tables import sink
from tests import files


def spans(result, stage: str) -> dict[int, tuple[float, float]]:
    return {n: (began, ended) for n, s, began, ended in result.timeline if s == stage}


@pytest.mark.parametrize("caller", ["executors", "driver"])
def test_two_batches_are_in_flight_at_once_and_each_file_has_one_row(
    spark, serve, run_config, tmp_path, caller
) -> None:
    count, batch, budget = 24, 4, 4
    folder = files.write_photos(tmp_path / "in", count, "p{:02}.jpg", lambda i: (30 + i, 24))
    endpoint, creds = serve(latency_ms=150, max_concurrency=budget)
    cfg = run_config(folder, max_files_per_batch=batch, max_concurrency=budget, caller=caller)
    result = runner.run(cfg, creds, spark, progress=lambda _: None)

    asked, committed = spans(result, "ask"), spans(result, "commit")
    assert sorted(asked) == sorted(committed) == list(range(1, count // batch + 1))
    # Batch k+1 was being asked while batch k was still being committed, for some k.
    overlapping = [k for k in committed if k + 1 in asked and asked[k + 1][0] < committed[k][1]]
    assert overlapping, result.timeline
    # ...and never more than the budget in flight, nothing refused, nothing asked twice.
    stats = endpoint.stats()
    assert stats["max_in_flight"] <= budget and stats["by_status"] == {"200": count}
    rows = spark.read.format("delta").load(cfg.table)
    assert rows.count() == count == rows.select("path").distinct().count()
    assert {r.status for r in rows.select("status").distinct().collect()} == {"ok"}
    assert result.requests == count and result.statuses == {"ok": count}


def test_identical_bytes_in_two_batches_in_flight_are_asked_once(
    spark, serve, run_config, tmp_path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    same = files.jpeg(41, 33)
    for i in range(8):  # batches of 2: copies of the same photo in batches 1 and 3
        (folder / f"p{i}.jpg").write_bytes(same if i in (0, 5) else files.jpeg(50 + i, 30))
    endpoint, creds = serve(latency_ms=100)
    cfg = run_config(folder, max_files_per_batch=2, caller="driver")
    runner.run(cfg, creds, spark, progress=lambda _: None)
    assert endpoint.stats()["requests"] == 7
    rows = {r.path.rsplit("/", 1)[-1]: r for r in spark.read.format("delta").load(cfg.table)
            .collect()}
    assert rows["p5.jpg"].reused_from == rows["p0.jpg"].path and rows["p5.jpg"].attempts == 0
    assert rows["p5.jpg"].caption == rows["p0.jpg"].caption


def test_an_insert_only_batch_that_meets_a_row_written_meanwhile_is_merged_whole(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 2, "p{}.jpg", lambda i: (30 + i, 20))
    _, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    tables = sink.resolve(spark, cfg.table)
    rows = [r.asDict() for r in spark.table(tables.captions).collect()]
    # Another run wrote p0 as failed after this batch was planned as new: the insert-only
    # MERGE inserts nothing for it, sees so in its metrics, and the full MERGE replaces it.
    failed = [{**r, "status": "failed", "caption": None} for r in rows if "p0" in r["path"]]
    sink.merge_batch(spark, tables, spark.createDataFrame(failed, spark.table(tables.captions)
                                                          .schema))
    fresh = [{**r, "run_id": "again", "modified_at": _micros(r)} for r in rows
             if "p0" in r["path"]]
    sink.merge_captions(spark, tables, fresh, new=True)
    after = {r.path.rsplit("/", 1)[-1]: r for r in spark.table(tables.captions).collect()}
    assert {n: (r.status, r.run_id) for n, r in after.items()} == {
        "p0.jpg": ("ok", "again"), "p1.jpg": ("ok", rows[0]["run_id"])}


def _micros(row) -> int:
    """A TIMESTAMP as it came back from Spark (a naive local time) in epoch microseconds."""
    return round(row["modified_at"].timestamp() * 1e6)
