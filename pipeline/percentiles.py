"""The one percentile every figure uses: the run's summary and runs row, the report and the
compare page."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[int], q: float) -> int | None:
    """Nearest rank: the smallest value with at least `q` of the values at or below it, so a
    value that occurred (as Spark's percentile_approx gives for data this small)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
