"""Answers made durable as they arrive, so a crash costs seconds of answers, not batches.

A batch's rows reach the captions table in one MERGE, once all its answers are in: a run
killed before that (kill -9, a lost driver, a write that failed) would lose, and a rerun pay
again for, every answer of the batches in flight, however large they are. So the run also
appends what it is answered to `<table>_journal`, every JOURNAL_S at most, while it asks:

    arrive   the caller hands each answer (a unit's, on the driver; an asking job's, on the
             executors) to `Journal.add`, as the row it will be in its table
    append   a thread appends what came in since the last time: one blind Delta append,
             which never conflicts with another run's
    trim     once a batch is MERGEd its journal rows are redundant: dropped every TRIM_S
    end      a run that ends in good order drops the rest; one that fails first appends
             what it holds, so nothing it was answered is lost

A run that dies leaves its rows. Before a run plans, it folds the rows of every run that is
no longer alive (no lease holds in the claims table: pipeline/runs/claims.py) into the
tables, with the MERGE keyed as theirs (never a second row for a file), and drops them;
a unit a dead run held is folded again before the claims tail looks at it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.interrupts import quietly
from pipeline.tables import sink

JOURNAL_S = 1.0  # answers wait this long at most before they are appended
TRIM_S = 60.0  # journal rows of MERGEd batches are dropped this often
KINDS = ("captions", "groups")


class Journal:
    """One run's journal. `add` may be called from any thread (an event loop's callback)."""

    def __init__(self, spark: SparkSession, run_id: str) -> None:
        self.spark, self.run_id = spark, run_id
        self.appended = 0  # rows made durable
        self._tables: sink.Tables | None = None
        self._rows: list[dict[str, Any]] = []
        self._committed = 0  # the last batch whose rows are MERGEd
        self._trimmed = 0
        self._last_trim = time.monotonic()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="vision-batch-journal")

    def open(self, tables: sink.Tables) -> None:
        """Start appending to `tables.journal` (made by then)."""
        self._tables = tables
        self._thread.start()

    def add(self, batch: int, rows: dict[str, list[dict[str, Any]]]) -> None:
        """Answers of `batch`, as the rows they will be in each table (KINDS)."""
        entries = [{"run_id": self.run_id, "batch": batch, "kind": kind,
                    "row_json": json.dumps(row, default=str, sort_keys=True)}
                   for kind in KINDS for row in rows.get(kind, ())]
        if entries:
            with self._lock:
                self._rows.extend(entries)

    def committed(self, batches: Iterable[int]) -> None:
        """These batches are MERGEd: their rows need no journal any more."""
        with self._lock:
            self._committed = max(self._committed, *batches)
            # Not yet appended: never will be.
            self._rows = [r for r in self._rows if r["batch"] > self._committed]

    def close(self, kept: bool) -> None:
        """The run is over. `kept`: every answer is in the tables (it succeeded, or stopped
        in good order): its journal rows go. Else (it failed) what is still held is appended,
        for the next run to fold in."""
        with self._lock:
            self._closing = True
            if kept:
                self._rows = []
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if kept and self._tables is not None and self.appended:
            sink.forget_journal(self.spark, self._tables, {self.run_id: 2**31 - 1})

    def _run(self) -> None:
        while True:
            closing = self._wake.wait(JOURNAL_S) or self._closing
            self._wake.clear()
            quietly(self._append)  # tried again at the next turn
            if closing and self._closing:
                return
            if time.monotonic() - self._last_trim >= TRIM_S:
                self._last_trim = time.monotonic()
                quietly(self._trim)

    def _append(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows or self._tables is None:
            return
        try:
            sink.insert_journal(self.spark, self._tables, rows)
        except Exception:
            with self._lock:  # kept for the next turn, unless their batch is MERGEd by then
                self._rows[:0] = [r for r in rows if r["batch"] > self._committed]
            raise
        self.appended += len(rows)

    def _trim(self) -> None:
        with self._lock:
            upto = self._committed
        if upto > self._trimmed and self._tables is not None:
            sink.forget_journal(self.spark, self._tables, {self.run_id: upto})
            self._trimmed = upto


def fold(spark: SparkSession, tables: sink.Tables, me: str | None = None) -> int:
    """Fold into the tables the journal rows of every run no longer alive (its lease has
    lapsed or ended, or it never held one), and drop them; the captions rows folded. Runs
    alive are left alone: their own MERGEs will write their rows."""
    if not sink.present(spark, tables, "_journal"):
        return 0
    runs = [r for r in sink.journaled_runs(spark, tables) if r != me]
    if not runs:
        return 0
    gone = sorted(set(runs) - _alive(spark, tables, runs))
    return sink.fold_journal(spark, tables, gone) if gone else 0


def _alive(spark: SparkSession, tables: sink.Tables, runs: list[str]) -> set[str]:
    """Of `runs`, those whose last lease in the claims table still holds."""
    if not sink.present(spark, tables, "_claims"):
        return set()
    sink.ensure_claims(spark, tables)  # a foreign table there is refused, not read
    leases = (spark.table(tables.claims)
              .filter(F.col("unit").isNull() & F.col("run_id").isin(runs))
              .groupBy("run_id")
              .agg(F.max_by("expires_at", F.col("_metadata.row_commit_version")).alias("until"))
              .filter(F.col("until") > F.current_timestamp())
              .select("run_id").collect())
    return {r["run_id"] for r in leases}
