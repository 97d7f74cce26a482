"""The journal on real Delta tables: answers made durable before their batch is merged, a dead
run's answers folded in by the next run, never a second row (pipeline/runs/journal.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pipeline import runs as runner
from pipeline.runs import journal
from pipeline.tables import sink
from tests import files


def rows_of(spark, cfg) -> dict[str, dict]:
    return {r.path.rsplit("/", 1)[-1]: r.asDict()
            for r in spark.read.format("delta").load(cfg.table).collect()}


def journal_rows(spark, cfg) -> list:
    return spark.read.format("delta").load(cfg.table + "_journal").collect()


def test_a_run_whose_bookkeeping_write_fails_keeps_its_answers_for_the_next_run(
    spark, serve, run_config, tmp_path
) -> None:
    """#25: a run whose runs-table insert was refused after all its answers had come in
    wrote 0 rows, and a rerun paid for every answer again."""
    folder = files.write_photos(tmp_path / "in", 12, "p{:02}.jpg", lambda i: (30 + i, 20))
    endpoint, creds = serve()
    cfg = run_config(folder, max_files_per_batch=5, caller="driver")
    tables = sink.resolve(spark, cfg.table)
    sink.ensure_runs(spark, tables)
    # The runs table refuses the row that says a run started: the run cannot commit a
    # batch (every captions row must name a run the runs table knows).
    spark.sql(f"ALTER TABLE delta.`{cfg.table}_runs` ADD CONSTRAINT started "
              "CHECK (status <> 'running')")
    try:
        runner.run(cfg, creds, spark, progress=lambda _: None)
    except Exception as exc:  # the run fails, in one line
        assert "started" in str(exc) or "CHECK" in str(exc).upper()
    else:
        raise AssertionError("the run should have failed")
    paid = endpoint.stats()["answered_ok"]  # (the batches asked before the first commit)
    assert paid >= 5
    assert not rows_of(spark, cfg)  # nothing merged...
    # ...but every answer kept, those in flight as the run failed included (they were
    # given the grace to answer).
    assert len(journal_rows(spark, cfg)) == paid
    [failed] = spark.read.format("delta").load(cfg.table + "_runs").collect()
    assert failed.status == "failed" and failed.error_message

    spark.sql(f"ALTER TABLE delta.`{cfg.table}_runs` DROP CONSTRAINT started")
    again = runner.run(cfg, creds, spark, progress=lambda _: None)
    assert endpoint.stats()["answered_ok"] == 12  # every file once: not one paid twice
    assert (again.listed, again.skipped, again.written) == (12, paid, 12 - paid)
    rows = rows_of(spark, cfg)
    assert len(rows) == 12 and {r["status"] for r in rows.values()} == {"ok"}
    by_run = {r["run_id"] for r in rows.values()}
    assert failed.run_id in by_run  # the folded answers name the run that was paid for them
    assert all(f"{30 + int(n[1:3])}x20 pixels" in r["caption"] for n, r in rows.items())
    assert not journal_rows(spark, cfg)  # folded, then dropped


def test_a_dead_runs_journal_is_folded_once_and_a_live_runs_is_left_alone(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 3, "p{}.jpg", lambda i: (30 + i, 20))
    endpoint, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)  # makes the tables, p0..p2 ok
    tables = sink.resolve(spark, cfg.table)
    sink.ensure_claims(spark, tables)
    sink.ensure_journal(spark, tables)
    [done] = [r.asDict() for r in spark.read.format("delta").load(cfg.table).collect()
              if r.path.endswith("p0.jpg")]

    def row(name: str, status: str, run_id: str) -> dict:
        row = {k: v for k, v in done.items() if k != "processed_at"}
        row.update(path=done["path"].replace("p0.jpg", name), status=status, run_id=run_id,
                   caption=f"{name} by {run_id}" if status == "ok" else None,
                   modified_at=round(done["modified_at"].timestamp() * 1e6))
        return row

    def journaled(run_id: str, batch: int, rows: list[dict]) -> list[dict]:
        return [{"run_id": run_id, "batch": batch, "kind": "captions",
                 "row_json": json.dumps(r, default=str)} for r in rows]

    def lease(run_id: str, until: datetime) -> dict:
        return {"endpoint": cfg.endpoint, "prompt_id": done["prompt_id"], "unit": None,
                "run_id": run_id, "expires_at": round(until.timestamp() * 1e6)}

    now = datetime.now(timezone.utc)
    # Two runs died having been answered for x.jpg (one failed, one ok) and y.jpg; a third
    # is alive, answered for z.jpg, and will merge it itself.
    sink.insert_journal(spark, tables, journaled("dead-1", 1, [row("x.jpg", "failed", "dead-1"),
                                                              row("y.jpg", "ok", "dead-1")]))
    sink.insert_journal(spark, tables, journaled("dead-2", 3, [row("x.jpg", "ok", "dead-2")]))
    sink.insert_journal(spark, tables, journaled("alive", 1, [row("z.jpg", "ok", "alive")]))
    sink.insert_claims(spark, tables, [lease("dead-1", now - timedelta(seconds=5)),
                                       lease("alive", now + timedelta(seconds=60))])
    assert journal.fold(spark, tables) == 2
    rows = rows_of(spark, cfg)
    assert rows["x.jpg"]["status"] == "ok" and rows["x.jpg"]["run_id"] == "dead-2"
    assert rows["y.jpg"]["caption"] == "y.jpg by dead-1"
    assert "z.jpg" not in rows and len(rows) == 5  # one row per file, the live run's left
    assert {r.run_id for r in journal_rows(spark, cfg)} == {"alive"}
    assert journal.fold(spark, tables) == 0  # once only
    assert len(rows_of(spark, cfg)) == 5


def test_a_dead_grouped_runs_group_answers_are_folded_too(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 2, "p{}.jpg", lambda i: (30 + i, 20))
    cfg = run_config(folder)
    tables = sink.resolve(spark, cfg.table)
    sink.ensure_groups(spark, tables)
    sink.ensure_journal(spark, tables)
    group = {"group_key": "sku-1", "endpoint": cfg.endpoint, "prompt_id": "p", "fingerprint": "f",
             "member_paths": ["a.jpg", "b.jpg"], "images": 2, "parts": 1, "status": "ok",
             "answer": "two mugs", "part_answers": ["two mugs"], "prompt_tokens": 10,
             "completion_tokens": 3, "total_tokens": 13, "usage_source": "endpoint",
             "attempts": 1, "latency_ms": 5, "run_id": "dead"}
    sink.insert_journal(spark, tables, [{"run_id": "dead", "batch": 1, "kind": "groups",
                                         "row_json": json.dumps(group)}])
    journal.fold(spark, tables)  # no claims table at all: no run is alive
    [row] = spark.read.format("delta").load(cfg.table + "_groups").collect()
    assert (row.group_key, row.answer, list(row.member_paths)) == (
        "sku-1", "two mugs", ["a.jpg", "b.jpg"])
    assert not journal_rows(spark, cfg)
