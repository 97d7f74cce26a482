"""The one percentile every figure uses: the run's summary and runs row, the report and the
compare page."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def percentile(values: Sequence[int], q: float) -> int | None:
    """Nearest rank: the smallest value with at least `q` of the values at or below it, so a
    value that occurred (as Spark's percentile_approx gives for data this small)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def percentile_of_counts(counts: Mapping[int, int], q: float) -> int | None:
    """The same percentile, of values given as value -> how often it occurred: what a run of
    days keeps of its latencies (a count per millisecond seen), so its memory stays flat."""
    total = sum(counts.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(q * total)), 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    raise AssertionError("unreachable: the ranks add up to the total")
