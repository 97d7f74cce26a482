"""Tallying every row: the header figures and the charts. `Totals` gathers, in one pass and
bounded memory, what they need from every row (counters, and one int per request for the latency
and token distributions); `Usage` is the tokens paid for, per endpoint; `costs` prices them per
model family where conf/models.yml gives a price; `utc` and `percentile` are the small helpers
the page uses too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from pipeline.images.limits import Catalog, Price
from pipeline.outcomes import ErrorClass, Status

# Answers that came but are no caption (issue #27), shown per endpoint and prompt: the reader
# of a report or a comparison should see them before trusting the captions.
CHECKED = (ErrorClass.CUT_OFF, ErrorClass.REFUSED, ErrorClass.SCHEMA_MISMATCH)


@dataclass
class Usage:
    """Tokens of the rows that made requests (attempts > 0): what was paid for."""

    rows: int = 0
    # Each request counts once over the images it carried (packed or grouped rows share
    # it: request_share); rows from before that column count their attempts.
    requests: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.rows += other.rows
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens


@dataclass
class Checked:
    """Of the rows sent to the model (ok or failed; never the invalid ones), how many were
    answered with something that is no caption, by class (CHECKED)."""

    sent: int = 0
    classes: Counter = field(default_factory=Counter)
    finish_reasons: Counter = field(default_factory=Counter)  # as the endpoint said them

    def add(self, row: Mapping[str, Any]) -> None:
        if row.get("status") not in (Status.OK, Status.FAILED):
            return
        self.sent += 1
        if row.get("error_class") in CHECKED:
            self.classes[row["error_class"]] += 1
        if row.get("finish_reason"):
            self.finish_reasons[row["finish_reason"]] += 1

    def share(self, error_class: str) -> float | None:
        return self.classes[error_class] / self.sent if self.sent else None


@dataclass
class Totals:
    """What the figures and charts need from every row, in one pass and bounded memory
    (counters, and one int per request for the latency and token distributions)."""

    rows: int = 0
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # (status, error_class) -> rows
    paid: dict[str, Usage] = field(default_factory=dict)  # by endpoint
    reused: int = 0  # ok rows that took another file's answer without a request
    latencies: dict[str, list[int]] = field(
        default_factory=lambda: {Status.OK: [], Status.FAILED: []})
    tokens: list[int] = field(default_factory=list)  # total_tokens of paid ok rows
    image_tokens: list[int] = field(default_factory=list)  # estimated, rows that were sent
    processed: Counter = field(default_factory=Counter)  # processed_at (UTC) -> rows
    targets: set = field(default_factory=set)  # distinct (endpoint, prompt_id)
    checked: dict[tuple[str, str], Checked] = field(default_factory=dict)  # by the same pair

    def add(self, row: Mapping[str, Any]) -> None:
        status = row.get("status")
        self.rows += 1
        self.statuses[status] += 1
        if status != Status.OK:
            self.errors[(status, row.get("error_class") or "(none)")] += 1
        endpoint = row.get("endpoint") or ""
        target = (endpoint, str(row.get("prompt_id") or ""))
        self.targets.add((endpoint, row.get("prompt_id")))
        self.checked.setdefault(target, Checked()).add(row)
        attempts = row.get("attempts") or 0
        if attempts > 0:
            usage = self.paid.setdefault(endpoint, Usage())
            share = row.get("request_share")
            usage.add(Usage(1, attempts if share is None else share,
                            row.get("prompt_tokens") or 0,
                            row.get("completion_tokens") or 0, row.get("total_tokens") or 0))
            latency = row.get("latency_ms")
            if latency is not None and status in self.latencies:
                self.latencies[status].append(int(latency))
            if status == Status.OK and row.get("total_tokens") is not None:
                self.tokens.append(int(row["total_tokens"]))
        elif status == Status.OK:
            self.reused += 1
        if status != Status.INVALID and row.get("estimated_image_tokens") is not None and attempts:
            self.image_tokens.append(int(row["estimated_image_tokens"]))
        when = row.get("processed_at")
        if when is not None:
            self.processed[utc(when)] += 1

    def paid_total(self) -> Usage:
        total = Usage()
        for usage in self.paid.values():
            total.add(usage)
        return total


def utc(when: datetime | float) -> datetime:
    """An aware UTC datetime; naive ones are taken as UTC (the session time zone we set)."""
    if isinstance(when, (int, float)):
        return datetime.fromtimestamp(when, timezone.utc)
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(
        timezone.utc)


class FamilyCost(NamedTuple):
    family: str
    usage: Usage
    price: Price | None

    @property
    def cost(self) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.usage.prompt_tokens, self.usage.completion_tokens)


def costs(paid: Mapping[str, Usage], catalog: Catalog) -> list[FamilyCost]:
    """Paid usage per model family (endpoints mapped by name), priced where configured."""
    by_family: dict[str, Usage] = {}
    prices: dict[str, Price | None] = {}
    for endpoint, usage in paid.items():
        family = catalog.family(endpoint)
        by_family.setdefault(family.name, Usage()).add(usage)
        prices[family.name] = family.price
    return [FamilyCost(name, by_family[name], prices[name]) for name in sorted(by_family)]
