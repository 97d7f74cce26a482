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
from pipeline.outcomes import DEFERRED, ErrorClass
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
        by_key: dict[str, list[str]] = {}
        for path, key in sorted(valid.items()):
            by_key.setdefault(key or "", []).append(path)  # (valid members have a group)
        return Ask(members.select(*MEMBER_COLUMNS, "group_key"),
                   tuple(tuple(paths) for _, paths in sorted(by_key.items())), by_group=True)

    def rows(self, prepared: Prepared, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        captions, answered = self._rows(prepared, parts)
        self._groups_rows[prepared.batch.number] = answered
        return captions

    def durable(self, prepared: Prepared, parts: list[dict[str, Any]]
                ) -> dict[str, list[dict[str, Any]]]:
        """The rows of the groups whose every part is answered here (none put off), for the
        journal: the members' captions rows and the group's row."""
        whole = ({p["group_key"] for p in parts}
                 - {p["group_key"] for p in parts if p["status"] == DEFERRED})
        captions, answered = self._rows(
            prepared, [p for p in parts if p["group_key"] in whole], whole)
        return {"captions": captions, "groups": answered}

    def _rows(self, prepared: Prepared, parts: list[dict[str, Any]],
              only: set[str] | None = None) -> tuple[list[dict[str, Any]], list[dict]]:
        """(captions rows, groups rows) of the batch, or of the groups `only`."""
        ctx = self.ctx
        answers = {m["path"]: m for part in parts for m in groups.member_results(part)}
        # A group a stop cut short (a request of it cancelled) or put off gets no row at all,
        # neither its members nor itself: it is asked again whole.
        asked = {f["path"] for f in prepared.valid()}
        cut = {e.group_key for e in prepared.batch.entries
               if e.path in asked and e.path not in answers}
        out = []
        for entry in prepared.batch.entries:
            facts = prepared.facts.get(entry.path)
            if entry.group_key in cut or (only is not None and entry.group_key not in only):
                continue
            if entry.path in prepared.refused:
                out.append(rows.invalid(ctx, entry, facts, prepared.refused[entry.path]))
            elif facts is not None and facts["error_class"] is not None:
                out.append(rows.invalid(ctx, entry, facts))
            else:
                assert facts is not None
                out.append(rows.answered(ctx, entry, facts, answers[entry.path]))
        answered = [r for r in self._group_rows(prepared, parts) if r["group_key"] not in cut
                    and (only is None or r["group_key"] in only)]
        return out, answered

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
