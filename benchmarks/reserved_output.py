"""`vision-batch` as it would be if a request's reserved output were never given back: the
baseline that benchmarks/token_limits.py compares settlement with. Same arguments as the
command; only the pacer's settlement changes (it keeps the larger of reserved and used)."""

from __future__ import annotations

import sys

from pipeline.cli import main
from pipeline.endpoint import pacing

_settle = pacing.Window.settle


def _keep_reservation(self, entry, amount, now) -> None:
    _settle(self, entry, max(amount, entry.amount), now)


if __name__ == "__main__":
    pacing.Window.settle = _keep_reservation
    sys.exit(main(sys.argv[1:]))
