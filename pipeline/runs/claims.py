"""Overlapping runs share the work: two runs on one table, endpoint and prompt ask each unit
(a file, or a whole group) once, and each counts only what it asked.

Before a run asks a batch, it claims the batch's units in `<table>_claims`, and it asks only
the units it holds:

    claim   one blind append (no Delta conflict with anyone): a row per unit and a lease row
            (this run is alive until then). Then one read. Row tracking numbers each row with
            the version that committed it, so every run sees the same order. A unit is this
            run's unless another run still alive claimed it first (it is set aside) or a run
            that has ended or died did (it is asked only if the tables still hold no answer
            for it: that run may have answered it after this run was planned).
    lease   a run alive renews its lease every lease/3 seconds, and ends it with a last
            lease row as it ends; one that is killed stops renewing, and its lease lapses.
    tail    once the plan is through, the units set aside are looked at every POLL_S: those
            answered by the run that held them are done; those it let go (it ended or died
            without answering) are asked here. For at most MAX_TAIL_LEASES leases; what a
            run still holds after that is left to it, and said so.

Units are claimed CLAIM_FILES files at a time (whole batches; the default batch is that size):
a claim costs a Delta write and a read, about 1.5 s of Spark work. Claims are made a chunk
ahead, beside preparing and asking, so the endpoint does not wait for them; the larger the
chunk, the fewer of them compete with the run's own Spark work for the driver's cores.

Nothing is asked before it is claimed, the first batch included: two runs that start together
pay for each unit once. The first chunk's claim is written while its batches are prepared
(a fresh JVM's first Delta write takes seconds, the first images' preparation too): its
batches carry the claim (`Batch.claim`), and the loop asks only the units it holds.

Rows of runs gone for longer than FORGET_AFTER_S are deleted as one run in FORGET_EVERY ends.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.interrupts import Stop
from pipeline.runs.context import RunContext
from pipeline.runs.plan import Batch, Entry, cut
from pipeline.tables import sink

CLAIM_FILES = 1000  # files claimed with one write (at least one whole batch)
POLL_S = 2.0  # between looks at the units set aside, in the tail
MAX_TAIL_LEASES = 10  # the tail waits at most this many leases for another run's units
FORGET_AFTER_S = 24 * 3600  # a run gone this long: its rows are deleted...
FORGET_EVERY = 10  # ...by one run in this many, as it ends


def unit_of(entry: Entry) -> str:
    """What is claimed for an entry: its group (asked whole), or the file."""
    return entry.unit


@dataclass(frozen=True)
class Claim:
    """What the claims table says of one unit and one run."""

    unit: str
    run_id: str
    first: int  # the version that committed the run's first claim of the unit
    live: bool  # the run's lease holds now


@dataclass
class Decision:
    """Who asks each unit, as this run sees it."""

    mine: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # unit -> the live run that has it
    settled: set[str] = field(default_factory=set)  # first claimed by a run now gone


def decide(units: Iterable[str], claims: Iterable[Claim], me: str) -> Decision:
    """The first claim of a unit by a live run wins; every run that reads the same rows
    decides the same. A unit first claimed by a run now gone is `settled`: the caller asks
    it if the tables still hold no answer for it."""
    by_unit: defaultdict[str, list[Claim]] = defaultdict(list)
    for claim in claims:
        by_unit[claim.unit].append(claim)
    decision = Decision()
    for unit in units:
        seen = by_unit.get(unit, [])
        own = min((c.first for c in seen if c.run_id == me), default=None)
        before = [c for c in seen if c.run_id != me and (own is None or c.first < own)]
        live = [c for c in before if c.live]
        if live:
            decision.held[unit] = min(live, key=lambda c: c.first).run_id
        elif before:
            decision.settled.add(unit)
        else:
            decision.mine.add(unit)
    return decision


class Claims:
    """One run's claims. `batches` is the plan's stream cut to what this run holds, then the
    tail; `close` ends the lease once the run's last rows are committed."""

    def __init__(self, spark: SparkSession, ctx: RunContext, claimable: Future[sink.Tables],
                 still_to_do: Callable[[list[Entry]], list[Entry]], stop: Stop) -> None:
        """`claimable`: the run's tables, once the claims table among them is there."""
        self.spark, self.ctx, self._claimable = spark, ctx, claimable
        self._still_to_do, self._stop = still_to_do, stop
        self.lease = float(ctx.config.lease_seconds)
        self.others: Counter[str] = Counter()  # files another run asked, by run
        self.left: dict[str, str] = {}  # unit -> the run still at it when the tail gave up
        self.waited_s = 0.0  # in the tail
        self._aside: dict[str, list[Entry]] = {}  # units another live run holds
        self._members_left: dict[str, list[Entry]] = {}
        self._holders: dict[str, str] = {}
        self._number = 0
        self._tables: sink.Tables | None = None
        self._first: threading.Thread | None = None  # the first chunk's claim
        self._written = threading.Lock()  # one write at a time; held while one is under way
        self._last_write = 0.0
        self._closing = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name="vision-batch-lease")

    def batches(self, stream: Iterable[Batch]) -> Iterator[Batch]:
        """The batches this run asks, numbered again from 1: the first chunk's with its claim
        still being written (`Batch.claim`: the units this run holds, once known), every
        later one cut to what this run holds."""
        chunks = _chunks(iter(stream))
        first = next(chunks, None)
        if first is None:
            return
        # Nothing is claimed before the claims table is known to be ours (made, or checked,
        # beside the start of the run).
        self._tables = self._claimable.result()
        self._renewer.start()
        claimed: Future[set[str]] = Future()
        self._first = threading.Thread(target=_settle, args=(claimed, self._claim, first),
                                       name="vision-batch-claim", daemon=True)
        self._first.start()
        for batch in first:
            yield replace(self._numbered(batch.entries), claim=claimed)
        claimed.exception()  # one claim at a time: its decision first
        for chunk in chunks:
            if self._stop.requested:
                return
            mine = self._claim(chunk)
            for batch in chunk:
                entries = tuple(e for e in batch.entries if unit_of(e) in mine)
                if entries:
                    yield self._numbered(entries)
        yield from self._tail()

    def close(self) -> None:
        """The run is over and its rows committed: end its lease, so other runs take at once
        what it let go (a file it left unanswered, or answered `failed`), and, one run in
        FORGET_EVERY, forget runs long gone."""
        self._closing.set()
        if self._renewer.is_alive():
            self._renewer.join()
        if self._first is not None:
            self._first.join()
        if self._last_write == 0.0:  # nothing was ever claimed
            return
        self._write([], expires=datetime.now(timezone.utc))
        if _tidies(self.ctx.run_id):
            gone = self._long_gone()
            if gone:
                assert self._tables is not None  # _write above needed them too
                sink.forget_claims(self.spark, self._tables, gone)

    def said(self) -> list[str]:
        """What the run's output says of the work other runs did or still do."""
        lines = []
        if self.others:
            lines.append(f"{sum(self.others.values())} file(s) of this plan were asked by "
                         f"other runs at work beside this one ({_runs(self.others)})")
        if self.left:
            files = sum(len(self._members_left[u]) for u in self.left)
            lines.append(f"{files} file(s) left to runs still at work on them after "
                         f"{self.waited_s:.0f} s ({_runs(Counter(self.left.values()))})")
        return lines

    def _numbered(self, entries: tuple[Entry, ...]) -> Batch:
        self._number += 1
        return Batch(self._number, entries)

    def _claim(self, batches: list[Batch]) -> set[str]:
        """Claim the units of these batches; those this run holds."""
        members = _members(e for b in batches for e in b.entries)
        self._write(sorted(members))
        return self._mine(members)

    def _mine(self, members: dict[str, list[Entry]]) -> set[str]:
        """Of these units (claimed by this run), those it asks now. The claims are read
        before the tables: a run seen gone has committed all it will."""
        decision = decide(members, self._read(sorted(members)), self.ctx.run_id)
        mine = set(decision.mine)
        if decision.settled:
            waiting = [e for u in decision.settled for e in members[u]]
            mine |= {unit_of(e) for e in self._still_to_do(waiting)}
        for unit, run in decision.held.items():
            self._aside[unit] = members[unit]
            self._holders[unit] = run
        for unit in set(members) - mine - set(decision.held):  # answered by a run now gone
            self.others[self._holder(unit)] += len(members[unit])
        return mine

    def _tail(self) -> Iterator[Batch]:
        """The units set aside: each once the run that held it has answered it (done) or
        let it go (asked here)."""
        deadline = time.monotonic() + MAX_TAIL_LEASES * self.lease
        began = time.monotonic()
        while self._aside and not self._stop.requested:
            members, self._aside = self._aside, {}
            seen = decide(members, self._read(sorted(members)), self.ctx.run_id)
            waiting = [e for u in members for e in members[u]]
            left = {unit_of(e) for e in self._still_to_do(waiting)}
            for unit in set(members) - left:  # answered by the run that held it
                self.others[self._holders[unit]] += len(members[unit])
            free = left - set(seen.held)
            self._aside = {u: members[u] for u in left & set(seen.held)}
            self._holders.update(seen.held)
            if free:
                entries = sorted((e for u in free for e in members[u]),
                                 key=lambda e: (unit_of(e), e.path))
                for batch in cut(entries, self.ctx.config.max_files_per_batch, unit_of):
                    yield self._numbered(batch.entries)
            elif self._aside and (time.monotonic() >= deadline or self._stop.wait(POLL_S)):
                break
        self.waited_s = time.monotonic() - began
        self.left = {u: self._holders[u] for u in self._aside}
        self._members_left = dict(self._aside)

    def _holder(self, unit: str) -> str:
        return self._holders.get(unit, "a run that has ended")

    def _read(self, units: list[str]) -> list[Claim]:
        """Every run's first claim of these units, and whether its lease holds."""
        assert self._tables is not None
        # One scan, one aggregate: per run, whether its last lease holds (the lease rows'
        # group, unit NULL); per unit asked about and run, its first claim. The table is read
        # once, not once for the leases and once more for the claims.
        now = F.lit(datetime.now(timezone.utc))
        wanted = F.col("unit").isNull() | F.col("unit").isin(units)
        found = (self.spark.table(self._tables.claims).filter(self.ctx.asked_here & wanted)
                 .select("unit", "run_id", "expires_at",
                         F.col("_metadata.row_commit_version").alias("version"))
                 .groupBy("unit", "run_id")
                 .agg(F.min("version").alias("first"),
                      (F.max_by("expires_at", "version") > now).alias("live"))
                 .collect())
        live = {r["run_id"] for r in found if r["unit"] is None and r["live"]}
        claims = [Claim(r["unit"], r["run_id"], int(r["first"]), r["run_id"] in live)
                  for r in found if r["unit"] is not None]
        self._holders.update({c.unit: c.run_id for c in claims if c.run_id != self.ctx.run_id
                              and c.unit not in self._holders})
        return claims

    def _write(self, units: list[str], expires: datetime | None = None) -> None:
        """Append claims of `units`, with a lease row: until `expires`, or a lease from now."""
        assert self._tables is not None
        until = expires or datetime.now(timezone.utc) + timedelta(seconds=self.lease)
        base = {"endpoint": self.ctx.endpoint, "prompt_id": self.ctx.prompt_id,
                "run_id": self.ctx.run_id}
        rows: list[dict[str, Any]] = [{**base, "unit": u, "expires_at": None} for u in units]
        rows.append({**base, "unit": None, "expires_at": _micros(until)})
        with self._written:
            sink.insert_claims(self.spark, self._tables, rows)
            self._last_write = time.monotonic()

    def _renew(self) -> None:
        """The lease, renewed while the run is alive (a claim renews it too)."""
        while not self._closing.wait(self.lease / 6):
            if not self._last_write or time.monotonic() - self._last_write < self.lease / 3:
                continue  # nothing claimed yet, or a claim renewed it lately
            try:
                self._write([])
            except Exception:  # noqa: S110 - tried again at the next turn, well in time
                pass

    def _long_gone(self) -> list[str]:
        """Runs whose last lease ended more than FORGET_AFTER_S ago."""
        assert self._tables is not None
        before = datetime.now(timezone.utc) - timedelta(seconds=FORGET_AFTER_S)
        rows = (self.spark.table(self._tables.claims).filter(F.col("unit").isNull())
                .groupBy("run_id").agg(F.max("expires_at").alias("until"))
                .filter(F.col("until") < F.lit(before)).select("run_id").collect())
        return [r["run_id"] for r in rows]


def _settle(future: Future, action: Callable[..., Any], *args: Any) -> None:
    """`future` gets what `action(*args)` returns, or what it raises."""
    try:
        future.set_result(action(*args))
    except BaseException as exc:  # handed to whoever waits on the future
        future.set_exception(exc)


def _tidies(run_id: str) -> bool:
    """Whether this run forgets runs long gone as it ends: one run in FORGET_EVERY (by a hash
    of its random id), so the read that finds them is not in every run's end."""
    return zlib.crc32(run_id.encode()) % FORGET_EVERY == 0


def _runs(runs: Counter[str]) -> str:
    return "runs " + ", ".join(sorted(runs))


def _members(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    members: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        members[unit_of(entry)].append(entry)
    return dict(members)


def _chunks(batches: Iterator[Batch]) -> Iterator[list[Batch]]:
    """Consecutive whole batches holding at least CLAIM_FILES files (or what is left)."""
    chunk: list[Batch] = []
    for batch in batches:
        chunk.append(batch)
        if sum(len(b.entries) for b in chunk) >= CLAIM_FILES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1e6)
