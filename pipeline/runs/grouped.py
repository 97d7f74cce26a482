"""Groups (`--group-by`): the units are groups of files that belong together, asked in one
request each (or several, past the model's limits). Each member keeps its captions row, and
each group's answer goes to `<table>_groups`."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline import progress
from pipeline.endpoint import groups
from pipeline.files.source import Listing
from pipeline.images.prepare import Rejected
from pipeline.outcomes import ErrorClass
from pipeline.runs import plan, rows
from pipeline.runs.callers import Ask
from pipeline.runs.context import RunContext
from pipeline.runs.plan import Batch  # in the class, `plan` names its method
from pipeline.runs.prepare import Prepared, prepare
from pipeline.runs.udfs import MEMBER_COLUMNS
from pipeline.tables import sink


class Grouped:
    by_group = True

    def __init__(self, spark: SparkSession, ctx: RunContext) -> None:
        assert ctx.tables is not None
        self.spark, self.ctx = spark, ctx
        self.schema = sink.ensure_groups(spark, ctx.tables)
        self.groups_done: Counter = Counter()
        self._groups_rows: dict[int, list[dict[str, Any]]] = {}

    def plan(self, listing: Listing) -> plan.Plan:
        return plan.grouped(self.spark, self.ctx, listing)

    def prepare(self, batch: Batch) -> Prepared:
        message = groups.no_group_message(self.ctx.config.group_by or "")
        refused = {e.path: Rejected(ErrorClass.NO_GROUP, message)
                   for e in batch.entries if e.group_key is None}
        return prepare(self.spark, self.ctx, batch, refused)

    def ask(self, prepared: Prepared) -> Ask | None:
        keys = {e.path: e.group_key for e in prepared.batch.entries}
        valid = {f["path"]: keys[f["path"]] for f in prepared.valid()}
        if not valid:
            return None
        # Each member's group from a literal map: no join, so no broadcast job per batch.
        group_of = F.create_map(*[F.lit(v) for item in sorted(valid.items()) for v in item])
        members = prepared.held_for(set(valid)).withColumn("group_key", group_of[F.col("path")])
        return Ask(members.select(*MEMBER_COLUMNS, "group_key"), len(set(valid.values())),
                   by_group=True)

    def rows(self, prepared: Prepared, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ctx = self.ctx
        answers = {m["path"]: m for part in parts for m in groups.member_results(part)}
        # A group a stop cut short (a request of it cancelled) gets no row at all, neither its
        # members nor itself: a rerun asks it whole.
        asked = {f["path"] for f in prepared.valid()}
        cut = {e.group_key for e in prepared.batch.entries
               if e.path in asked and e.path not in answers}
        out = []
        for entry in prepared.batch.entries:
            facts = prepared.facts.get(entry.path)
            if entry.group_key in cut:
                continue
            if entry.path in prepared.refused:
                out.append(rows.invalid(ctx, entry, facts, prepared.refused[entry.path]))
            elif facts is not None and facts["error_class"] is not None:
                out.append(rows.invalid(ctx, entry, facts))
            else:
                assert facts is not None
                out.append(rows.answered(ctx, entry, facts, answers[entry.path]))
        self._groups_rows[prepared.batch.number] = [
            r for r in self._group_rows(prepared, parts) if r["group_key"] not in cut]
        return out

    def _group_rows(self, prepared: Prepared, parts: list[dict[str, Any]]) -> list[dict]:
        by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for part in parts:
            by_group[part["group_key"]].append(part)
        members: dict[str, list[str]] = defaultdict(list)
        fingerprints: dict[str, str | None] = {}
        for e in prepared.batch.entries:
            if e.group_key is not None:
                members[e.group_key].append(e.path)
                fingerprints[e.group_key] = e.fingerprint
        return [
            {**groups.group_row(key, paths, fingerprints[key] or "", by_group.get(key, [])),
             "endpoint": self.ctx.endpoint, "prompt_id": self.ctx.prompt_id,
             "run_id": self.ctx.run_id}
            for key, paths in sorted(members.items())
        ]

    def write(self, batches: list[Prepared], captions: list[dict[str, Any]]) -> None:
        assert self.ctx.tables is not None
        answered = [row for p in batches for row in self._groups_rows.pop(p.batch.number)]
        sink.merge_captions(self.spark, self.ctx.tables, captions,
                            new=all(p.batch.new for p in batches))
        sink.merge_groups(self.spark, self.ctx.tables, self.schema, answered)
        self.groups_done.update(r["status"] for r in answered)

    def detail(self) -> str:
        return "; groups " + progress.counts(self.groups_done)
