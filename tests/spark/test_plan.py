"""Planning on a real listing and a real table: what is skipped, how batches are cut, and the
zero-length files Spark's scan drops, found again by the driver or by the executors."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from pipeline import runs as runner
from pipeline.files import source
from pipeline.runs import plan
from pipeline.runs.context import context
from pipeline.tables import sink
from tests import files


def planned(spark, cfg, with_table: bool = True) -> plan.Plan:
    ctx = context(cfg)
    if with_table:
        ctx = replace(ctx, tables=sink.resolve(spark, cfg.table))
    return plan.files(spark, ctx, source.list_files(spark, cfg.input))


def test_the_files_left_come_in_batches_of_the_size_in_path_order(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 11, "p{:02}.jpg", lambda i: (20 + i, 20))
    _, creds = serve()
    cfg = run_config(folder, max_files_per_batch=4)
    runner.run(replace(cfg, input=str(folder / "p00.jpg")), creds, spark,
               progress=lambda _: None)  # one file done already

    result = planned(spark, cfg)
    assert (result.listed, result.skipped, result.pending, result.batches) == (11, 1, 10, 3)
    batches = list(result.stream)
    assert [len(b.entries) for b in batches] == [4, 4, 2]
    names = [e.path.rsplit("/", 1)[-1] for b in batches for e in b.entries]
    assert names == [f"p{i:02}.jpg" for i in range(1, 11)]
    assert all(e.length == os.path.getsize(folder / e.path.rsplit("/", 1)[-1])
               for b in batches for e in b.entries)
    assert all(not e.known for b in batches for e in b.entries)
    assert result.answers  # the table holds an ok answer a batch may reuse


def test_a_file_with_a_row_is_known_so_its_batch_is_merged_not_inserted(
    spark, serve, run_config, tmp_path
) -> None:
    from pipeline.local.faults import Faults

    folder = files.write_photos(tmp_path / "in", 3, "p{}.jpg", lambda i: (20 + i, 20))
    failing, creds = serve(Faults(rate_html=1.0))  # a row's failure (an outage is waited out)
    cfg = run_config(folder, max_attempts=1)
    runner.run(replace(cfg, input=str(folder / "p1.jpg")), creds, spark,
               progress=lambda _: None)  # p1 failed: it has a row, and is still to do
    (batch,) = planned(spark, cfg).stream
    assert {e.path.rsplit("/", 1)[-1]: e.known for e in batch.entries} == {
        "p0.jpg": False, "p1.jpg": True, "p2.jpg": False}
    assert not batch.new


def test_with_nothing_to_do_nothing_streams(spark, serve, run_config, tmp_path) -> None:
    folder = files.write_photos(tmp_path / "in", 3, "p{}.jpg", lambda i: (20 + i, 20))
    _, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    result = planned(spark, cfg)
    assert (result.listed, result.pending, result.batches) == (3, 0, 0)
    assert list(result.stream) == []


def test_a_dry_run_over_no_table_plans_everything(spark, run_config, tmp_path) -> None:
    folder = files.write_photos(tmp_path / "in", 3, "p{}.jpg", lambda i: (20 + i, 20))
    result = planned(spark, run_config(folder), with_table=False)
    assert (result.listed, result.pending) == (3, 3)


@pytest.mark.parametrize("who", ["driver", "executors"])
def test_zero_length_files_are_listed_wherever_they_hide(spark, tmp_path, monkeypatch,
                                                         who) -> None:
    if who == "executors":
        monkeypatch.setattr(source, "DRIVER_WALK_LIMIT", 0)
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    (root / "only empties" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "top.jpg").write_bytes(files.jpeg())
    (root / "a" / "b" / "photo.jpg").write_bytes(files.jpeg())
    for empty in ("e0.jpg", "a/e1.jpg", "a/b/e2.jpg", "only empties/e3.jpg",
                  "only empties/deeper/e4.jpg", ".hidden/e5.jpg", "a/_e6.jpg", "a/.e7.jpg"):
        (root / empty).write_bytes(b"")
    listing = source.list_files(spark, str(root))
    found = {r.path: r.length for r in listing.files.collect()}
    expected = {"top.jpg", "a/b/photo.jpg", "e0.jpg", "a/e1.jpg", "a/b/e2.jpg",
                "only empties/e3.jpg", "only empties/deeper/e4.jpg"}
    assert found == {f"file:{root}/{name}": 0 if "/e" in f"/{name}" else
                     os.path.getsize(root / name) for name in expected}
    assert listing.note is None
    # As Spark would list them: the same modification time, to the millisecond.
    empty = next(r for r in listing.files.collect() if r.path.endswith("e1.jpg"))
    assert round(empty.modificationTime.timestamp() * 1000) == (
        os.stat(root / "a" / "e1.jpg").st_mtime_ns // 1_000_000)
