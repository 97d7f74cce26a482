"""Choosing the gallery: a bounded, deterministic sample where every status is represented.
`tally` is the one pass over every row (the totals, and the keys of the rows the gallery shows);
`quotas` shares the cards between statuses, failed and invalid rows first; `Sampler` keeps the
lowest-ranked rows of each status in memory bounded by the limit; `gallery_order` is the order
the cards are shown in.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.outcomes import Status
from pipeline.report.totals import Totals

# Shown first, and guaranteed a share of a sampled gallery.
PROBLEMS = (Status.FAILED, Status.INVALID)
MAX_THUMBNAILS = 1000  # gallery cards by default: ~5 MB of thumbnails for photos
PROBLEM_SHARE = 0.5  # of a sampled gallery, at most this much goes to failed + invalid rows


RowKey = tuple[str, str, str]  # (path, endpoint, prompt_id): the table's key


def row_key(row: Mapping[str, Any]) -> RowKey:
    return (str(row.get("path") or ""), str(row.get("endpoint") or ""),
            str(row.get("prompt_id") or ""))


def _rank(key: RowKey) -> int:
    # A hash, not the path order: a sample spread over every folder, the same on every report.
    return int.from_bytes(hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest(), "big")


def water_fill(counts: Mapping[str, int], capacity: int) -> dict[str, int]:
    """Share `capacity` equally; a group smaller than its share takes all of its rows and
    leaves the rest to the others."""
    quota = {name: 0 for name in counts}
    left = max(0, capacity)
    ordered = sorted((n for n in counts if counts[n] > 0), key=lambda n: counts[n])
    for i, name in enumerate(ordered):
        quota[name] = min(counts[name], left // (len(ordered) - i))
        left -= quota[name]
    return quota


def quotas(counts: Mapping[str, int], limit: int,
           problem_share: float = PROBLEM_SHARE) -> dict[str, int]:
    """Cards per status when the table holds more rows than `limit`: failed and invalid rows
    (the ones a reader looks for) take up to `problem_share`, ok rows the rest, and whatever
    one side cannot use goes to the other."""
    if sum(counts.values()) <= limit:
        return dict(counts)
    problems: dict[str, int] = {s: counts.get(s, 0) for s in PROBLEMS}
    others = {s: n for s, n in counts.items() if s not in PROBLEMS}
    cap = max(1, int(limit * problem_share)) if sum(others.values()) else limit
    quota = water_fill(problems, min(cap, limit))
    quota.update(water_fill(others, limit - sum(quota.values())))
    spare = limit - sum(quota.values())
    if spare:
        quota.update(water_fill(problems, sum(quota[s] for s in PROBLEMS) + spare))
    return quota


class Sampler:
    """Keeps, per status, the `limit` rows of lowest rank: enough for any quota, in memory
    bounded by the limit whatever the table's size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._heaps: dict[str, list[tuple[int, RowKey]]] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        key = row_key(row)
        item = (-_rank(key), key)  # a max-heap on rank: the root is the first to drop
        heap = self._heaps.setdefault(str(row.get("status")), [])
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def chosen(self, counts: Mapping[str, int]) -> set[RowKey]:
        quota = quotas(counts, self.limit)
        keys: set[RowKey] = set()
        for status, heap in self._heaps.items():
            best = sorted(heap, reverse=True)[: quota.get(status, 0)]
            keys.update(key for _, key in best)
        return keys


def tally(rows: Iterable[Mapping[str, Any]], limit: int) -> tuple[Totals, set[RowKey]]:
    """One pass over every row: the totals, and the keys of the rows the gallery shows."""
    totals, sampler = Totals(), Sampler(limit)
    for row in rows:
        totals.add(row)
        sampler.add(row)
    return totals, sampler.chosen(totals.statuses)


def gallery_order(row: Mapping[str, Any]) -> tuple:
    status = row.get("status")
    rank = PROBLEMS.index(status) if status in PROBLEMS else len(PROBLEMS)
    return (rank, str(row.get("path") or ""), str(row.get("endpoint") or ""))
