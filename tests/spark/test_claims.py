"""Claims on a real Delta table: two runs in one session, a run that died, a run still at
work, and the rows of long-gone runs forgotten (pipeline/runs/claims.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from pipeline.interrupts import Stop
from pipeline.runs import claims as claiming
from pipeline.runs import plan
from pipeline.runs.claims import Claims, unit_of
from pipeline.runs.context import context
from pipeline.runs.plan import Batch, Entry
from pipeline.tables import sink


@pytest.fixture
def setting(spark, run_config, tmp_path, monkeypatch):
    """A table, a context per run, and batches of 4 fake files claimed 8 at a time."""
    monkeypatch.setattr(claiming, "CLAIM_FILES", 8)
    monkeypatch.setattr(claiming, "POLL_S", 0.2)
    cfg = run_config(tmp_path / "in", max_files_per_batch=4)  # leases of 60 s
    tables = sink.resolve(spark, cfg.table)
    sink.ensure_runs(spark, tables)
    sink.ensure_claims(spark, tables)
    made: Future = Future()
    made.set_result(tables)
    base = replace(context(cfg), tables=tables)

    def run(name: str) -> Claims:
        ctx = replace(base, run_id=name)
        return Claims(spark, ctx, made, stop=Stop(),
                      still_to_do=lambda entries: plan.still_to_do(spark, ctx, entries, False))

    batches = [Batch(n, tuple(Entry(f"file:/in/p{n}-{i}.jpg", 100 + i, 1_000_000 * n, False)
                              for i in range(4))) for n in range(1, 7)]
    return spark, base, tables, run, batches


def commit(spark, ctx, tables, batch: Batch, run_id: str) -> None:
    """The rows a run commits for a batch it asked (ok answers)."""
    rows = [{"path": e.path, "endpoint": ctx.endpoint, "prompt_id": ctx.prompt_id,
             "status": "ok", "size_bytes": e.length, "modified_at": e.modified_us,
             "run_id": run_id} for e in batch.entries]
    (sink.frame_of(spark, tables.schema, rows).write.format("delta").mode("append")
     .saveAsTable(tables.captions))


def names(batch: Batch) -> set[str]:
    return {e.path.rsplit("/", 1)[-1] for e in batch.entries}


def asked(batch: Batch) -> Batch:
    """What the loop asks of a batch: the units its claim holds, once decided."""
    if batch.claim is None:
        return batch
    mine = batch.claim.result()
    return replace(batch, entries=tuple(e for e in batch.entries if unit_of(e) in mine))


def test_two_runs_ask_disjoint_work_from_the_first_batch_on_and_skip_what_the_other_did(
    setting,
) -> None:
    spark, ctx, tables, run, batches = setting
    one, two = run("run-1"), run("run-2")
    a, b = one.batches(iter(batches)), two.batches(iter(batches))
    got: dict[str, list[set[str]]] = {"run-1": [], "run-2": []}

    def take(gen, run_id: str) -> None:
        batch = asked(next(gen))
        if batch.entries:
            got[run_id].append(names(batch))
            commit(spark, ctx, tables, batch, run_id)

    take(a, "run-1")  # run-1 claims batches 1 and 2 first, and asks 1
    take(b, "run-2")  # run-2 claimed them too, later: its first batch holds nothing...
    take(b, "run-2")  # ...nor its second
    take(b, "run-2")  # it claims 3 and 4, and asks 3
    take(a, "run-1")  # batch 2
    take(a, "run-1")  # 3 and 4 are run-2's: run-1 sets them aside, claims 5 and 6, asks 5
    take(b, "run-2")  # batch 4
    take(a, "run-1")  # batch 6
    assert next(a, None) is None  # the tail finds 3 and 4 answered
    assert next(b, None) is None  # 5 and 6 are run-1's; the tail finds 1, 2, 5, 6 answered

    def of(*numbers: int) -> list[set[str]]:
        return [names(batches[n - 1]) for n in numbers]

    assert got == {"run-1": of(1, 2, 5, 6), "run-2": of(3, 4)}  # each file asked once
    assert one.others == {"run-2": 8} and two.others == {"run-1": 16}
    assert not one.left and not two.left
    assert live(spark, tables) == {"run-1", "run-2"}
    for claims in (one, two):
        claims.close()
    assert not live(spark, tables)  # both leases end with their runs


def live(spark, tables) -> set[str]:
    return {r.run_id for r in spark.table(tables.claims).filter("unit IS NULL")
            .groupBy("run_id")
            .agg(F.max_by("expires_at", "_metadata.row_commit_version").alias("until"))
            .filter(F.col("until") > F.current_timestamp()).collect()}


def lease_rows(ctx, run_id: str, units: list[str], until: datetime) -> list[dict]:
    base = {"endpoint": ctx.endpoint, "prompt_id": ctx.prompt_id, "run_id": run_id}
    return [{**base, "unit": u, "expires_at": None} for u in units] + [
        {**base, "unit": None, "expires_at": round(until.timestamp() * 1e6)}]


def test_a_dead_runs_claims_lapse_and_a_live_runs_units_wait_until_it_lets_go(
    setting, monkeypatch
) -> None:
    spark, ctx, tables, run, batches = setting
    monkeypatch.setattr(claiming, "FORGET_EVERY", 1)  # this run's end forgets "old"
    now = datetime.now(timezone.utc)
    units = [[unit_of(e) for e in b.entries] for b in batches]
    # "dead" was killed holding batches 2 and 3, and answered one file of them first;
    # "busy" is at work on batch 4; "old" ended two days ago.
    sink.insert_claims(spark, tables, lease_rows(ctx, "dead", units[1] + units[2],
                                                 now - timedelta(seconds=1)))
    commit(spark, ctx, tables, replace(batches[1], entries=batches[1].entries[:1]), "dead")
    sink.insert_claims(spark, tables, lease_rows(ctx, "busy", units[3],
                                                 now + timedelta(seconds=60)))
    sink.insert_claims(spark, tables, lease_rows(ctx, "old", units[5],
                                                 now - timedelta(days=2)))

    me = run("run-1")
    gen = me.batches(iter(batches[:4]))
    first_three = [names(asked(next(gen))) for _ in range(3)]
    assert first_three[0] == names(batches[0])
    # What "dead" answered is done; the rest of its claims are this run's.
    assert set().union(*first_three[1:]) == (names(batches[1]) | names(batches[2])) - {
        "p2-0.jpg"}
    assert me.others == {"dead": 1}

    # Batch 4 waits in the tail until "busy" ends, without answering it: then it is asked.
    def end_busy() -> None:  # once batch 4 is set aside, a second later
        deadline = time.monotonic() + 60
        while not me._aside and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        sink.insert_claims(spark, tables, lease_rows(ctx, "busy", [],
                                                     datetime.now(timezone.utc)))

    ended = threading.Thread(target=end_busy)
    ended.start()
    (tail,) = list(gen)
    ended.join()
    assert names(tail) == names(batches[3]) and me.waited_s >= 0.5
    assert not me.left

    me.close()  # forgets "old", gone over a day; keeps the others
    kept = {r.run_id for r in spark.table(tables.claims).select("run_id").distinct().collect()}
    assert kept == {"dead", "busy", "run-1"}
    assert not live(spark, tables)


def test_units_a_live_run_keeps_are_left_to_it_once_the_tail_gives_up(
    setting, monkeypatch
) -> None:
    spark, ctx, tables, run, batches = setting
    monkeypatch.setattr(claiming, "MAX_TAIL_LEASES", 0.03)  # 1.8 s at a 60 s lease
    until = datetime.now(timezone.utc) + timedelta(seconds=60)
    sink.insert_claims(spark, tables, lease_rows(
        ctx, "busy", [unit_of(e) for e in batches[1].entries], until))
    me = run("run-1")
    got = [names(asked(b)) for b in me.batches(iter(batches[:2]))]
    assert got == [names(batches[0]), set()]  # the first chunk's claim: batch 2 held
    assert me.left == {unit_of(e): "busy" for e in batches[1].entries}
    (line,) = me.said()
    assert line.startswith("4 file(s) left to runs still at work on them after") and "busy" in line
    me.close()
