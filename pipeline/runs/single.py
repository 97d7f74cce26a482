"""Single images, asked alone or packed K to a request (`--images-per-request`): the units
are files, and identical bytes are asked once per run (and never again once the table holds
an answer for them)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.files.source import Listing
from pipeline.outcomes import DEFERRED, Status
from pipeline.runs import plan, rows
from pipeline.runs.callers import Ask
from pipeline.runs.context import RunContext
from pipeline.runs.plan import Batch  # in the class, `plan` names its method
from pipeline.runs.prepare import Prepared, prepare
from pipeline.runs.udfs import MEMBER_COLUMNS
from pipeline.tables import sink

# What a reused answer copies from the row that paid for it.
STORED = ("status", "caption", "response_json", "prompt_tokens", "completion_tokens",
          "total_tokens", "usage_source", "latency_ms", "error_class", "error_message",
          "finish_reason")


class Reuse:
    """This run's answers by SHA-256, so identical bytes in different batches are asked once:
    a batch claims the bytes it asks about; a later batch with the same bytes takes the
    answer when it commits (batches commit in order, so it is there by then). Bounded: the
    oldest answers go first, long after the batches in flight are done with them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._answers: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, owners: dict[str, str]) -> dict[str, str]:
        """Of `owners` (bytes -> the path that would ask), those nobody has asked about."""
        with self._lock:
            mine = {s: p for s, p in owners.items()
                    if s not in self._answers and s not in self._claimed}
            self._claimed.update(mine)
            return mine

    def settle(self, answers: dict[str, tuple[str, dict[str, Any]]]) -> None:
        with self._lock:
            for sha, answer in answers.items():
                self._answers[sha] = answer
                self._answers.move_to_end(sha)
                self._claimed.discard(sha)
            while len(self._answers) > self.capacity:
                self._answers.popitem(last=False)

    def release(self, shas: Iterable[str]) -> None:
        """These bytes were asked about and got no answer (put off, or cut short by a stop):
        whoever meets them next asks."""
        with self._lock:
            self._claimed.difference_update(shas)

    def answer(self, sha: str) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            return self._answers.get(sha)


class Singles:
    by_group = False

    def __init__(self, spark: SparkSession, ctx: RunContext) -> None:
        self.spark, self.ctx = spark, ctx
        self.reuse = Reuse(4 * ctx.config.max_files_per_batch)
        self._asked: dict[int, dict[str, str]] = {}  # batch -> bytes it asked, by whom
        self._look = True  # whether the table may hold answers to reuse

    def plan(self, listing: Listing) -> plan.Plan:
        planned = plan.files(self.spark, self.ctx, listing)
        self._look = planned.answers
        return planned

    def prepare(self, batch: Batch) -> Prepared:
        prepared = prepare(self.spark, self.ctx, batch)
        prepared.known = self._known(prepared)
        return prepared

    def _known(self, prepared: Prepared) -> dict[str, dict[str, Any]]:
        """Answers the table already holds for these bytes (paid for by another path, or an
        earlier run): the first by path, for each SHA-256."""
        shas = sorted({f["content_sha256"] for f in prepared.valid()})
        if not shas or self.ctx.tables is None or not self._look:
            return {}
        wanted = self.spark.createDataFrame([(s,) for s in shas], "content_sha256 STRING")
        found = (
            self.spark.table(self.ctx.tables.captions)
            .filter(self.ctx.asked_here & (F.col("status") == Status.OK)
                    & F.col("reused_from").isNull())
            .join(F.broadcast(wanted), "content_sha256", "left_semi")
            .select("content_sha256", "path", *STORED)
            .collect()
        )
        known: dict[str, dict[str, Any]] = {}
        for row in sorted(found, key=lambda r: r["path"]):
            known.setdefault(row["content_sha256"], row.asDict())
        return known

    def ask(self, prepared: Prepared) -> Ask | None:
        """The images to ask about: one per distinct content not answered yet."""
        owners: dict[str, str] = {}
        for facts in prepared.valid():
            if facts["content_sha256"] not in prepared.known:
                owners.setdefault(facts["content_sha256"], facts["path"])
        mine = self.reuse.claim(owners)
        self._asked[prepared.batch.number] = mine
        if not mine:
            return None
        members = prepared.held_for(set(mine.values()))
        return Ask(members.select(*MEMBER_COLUMNS), tuple((p,) for p in sorted(mine.values())))

    def rows(self, prepared: Prepared, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ctx = self.ctx
        by_path = {a["path"]: a for a in answers}
        asked = self._asked.pop(prepared.batch.number, {})
        # Every asked file has its answer, unless its request was put off (it comes back in
        # a later batch) or a stop cancelled it (a rerun asks it): then it gets no row, nor
        # do its twins.
        self.reuse.settle({sha: (path, by_path[path]) for sha, path in asked.items()
                           if path in by_path})
        self.reuse.release(sha for sha, path in asked.items() if path not in by_path)
        out = []
        for entry in prepared.batch.entries:
            facts = prepared.facts.get(entry.path)
            if entry.path in prepared.refused:
                out.append(rows.invalid(ctx, entry, facts, prepared.refused[entry.path]))
                continue
            assert facts is not None
            if facts["error_class"] is not None:
                out.append(rows.invalid(ctx, entry, facts))
                continue
            sha = facts["content_sha256"]
            if sha in prepared.known:
                stored = prepared.known[sha]
                source = None if stored["path"] == entry.path else stored["path"]
                out.append(rows.answered(ctx, entry, facts, stored, source, paid=False))
            elif asked.get(sha) == entry.path:
                if entry.path in by_path:
                    out.append(rows.answered(ctx, entry, facts, by_path[entry.path]))
            else:  # the same bytes as a file this run asked about, here or in a batch before
                found = self.reuse.answer(sha) or (
                    (asked[sha], by_path[asked[sha]]) if asked.get(sha) in by_path else None)
                if found is not None:
                    owner, answer = found
                    out.append(rows.answered(ctx, entry, facts, answer, owner, paid=False))
        return out

    def durable(self, prepared: Prepared, answers: list[dict[str, Any]]
                ) -> dict[str, list[dict[str, Any]]]:
        """The captions rows of the files these answers were asked for, for the journal (a
        twin of one takes its answer at the commit, or from the table in a later run)."""
        return {"captions": [
            rows.answered(self.ctx, prepared.entry(a["path"]), prepared.facts[a["path"]], a)
            for a in answers if a["status"] != DEFERRED]}

    def write(self, batches: list[Prepared], captions: list[dict[str, Any]]) -> None:
        assert self.ctx.tables is not None
        sink.merge_captions(self.spark, self.ctx.tables, captions,
                            new=all(p.batch.new for p in batches))

    def detail(self) -> str:
        return ""
