"""`vision-batch estimate`: the run's listing, checks and preparation, without a request.

It answers "what would this cost and what would be refused" before anything is paid for:
counts by status and error class, requests (one per distinct image), and the image tokens
the model family's formula gives for what would be sent.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

from pyspark.sql import SparkSession

from pipeline.config import ConfigError, RunConfig
from pipeline.endpoint.pacing import NAMES, UNITS
from pipeline.endpoint.payloads import text_tokens
from pipeline.files import source
from pipeline.runs import plan
from pipeline.runs.context import context
from pipeline.runs.prepare import prepare
from pipeline.spark import get_spark
from pipeline.tables import sink


@dataclass
class Estimate:
    endpoint: str
    family: str
    prompt_id: str
    listed: int = 0
    skipped: int = 0
    sendable: int = 0
    requests: int = 0
    image_tokens: int = 0
    text_tokens_per_request: int = 0
    max_completion_tokens: int = 0
    error_classes: Counter = field(default_factory=Counter)
    packed: int = 1  # images per request
    note: str | None = None  # what the listing could not see, or skipped (links)
    limits: dict[str, int] = field(default_factory=dict)  # rpm, itpm, otpm, qph given

    def minutes_at_limits(self) -> list[tuple[str, float]]:
        """(limit, minutes the run needs at it), the binding limit first. Output is counted
        at max_tokens per request: an upper bound, as answers are usually shorter."""
        needs = {"rpm": self.requests, "itpm": self.input_tokens,
                 "otpm": self.requests * self.max_completion_tokens, "qph": self.requests * 60}
        return sorted(((name, needs[name] / limit) for name, limit in self.limits.items()),
                      key=lambda pair: -pair[1])

    @property
    def invalid(self) -> int:
        return sum(self.error_classes.values())

    @property
    def input_tokens(self) -> int:
        return self.image_tokens + self.requests * self.text_tokens_per_request


def estimate(config: RunConfig, spark: SparkSession | None = None) -> Estimate:
    if config.group_by is not None:
        raise ConfigError("estimate plans single images and packs; it does not plan groups "
                          "yet (run without --group-by for the per-image figures)")
    ctx = context(config)  # settings errors come before Spark starts
    spark = spark or get_spark(kind=config.spark)
    ctx = replace(ctx, tables=sink.find(spark, config.table))
    result = Estimate(
        ctx.endpoint, ctx.family.name, ctx.prompt_id,
        text_tokens_per_request=text_tokens(ctx.spec.prompt),
        max_completion_tokens=ctx.spec.max_tokens,
        limits={name: getattr(config, f"max_{name}") for name in ("rpm", *NAMES)
                if getattr(config, f"max_{name}")},
    )
    listing = source.list_files(spark, config.input or "")
    result.note = listing.note
    planned = plan.files(spark, ctx, listing)
    result.listed, result.skipped = planned.listed, planned.skipped
    seen: set[str] = set()
    for batch in planned.stream:
        prepared = prepare(spark, ctx, batch)
        prepared.release()  # the facts are enough: nothing is sent
        result.error_classes.update(r.error_class for r in prepared.refused.values())
        for facts in prepared.facts.values():
            if facts["error_class"] is not None:
                result.error_classes[facts["error_class"]] += 1
                continue
            result.sendable += 1
            if facts["content_sha256"] not in seen:  # same bytes twice: one request
                seen.add(facts["content_sha256"])
                result.requests += 1
                result.image_tokens += facts["estimated_image_tokens"]
    if config.images_per_request > 1:  # packs of K; the byte limit may cut a few more
        result.requests = math.ceil(result.requests / config.images_per_request)
        result.packed = config.images_per_request
    return result


LIMIT_UNITS = {"rpm": "requests per minute", **UNITS}


def _duration(minutes: float) -> str:
    if minutes < 1:
        return "under a minute"
    return f"about {minutes:,.0f} min" if minutes < 120 else f"about {minutes / 60:,.1f} h"


def render(e: Estimate) -> str:
    rows = [
        ("endpoint", f"{e.endpoint} (limits: {e.family}, prompt {e.prompt_id})"),
        ("files listed", f"{e.listed:,}"),
        ("already done", f"{e.skipped:,}"),
        ("would be sent", f"{e.sendable:,} files in "
                          + (f"about {e.requests:,} requests of up to {e.packed} images"
                             if e.packed > 1 else f"{e.requests:,} requests")),
        ("invalid", f"{e.invalid:,}"),
        *[(f"  {name}", f"{count:,}") for name, count in sorted(e.error_classes.items())],
        ("image tokens", f"{e.image_tokens:,}"),
        ("input tokens", f"{e.input_tokens:,} (images + ~{e.text_tokens_per_request} prompt "
                         "tokens per request)"),
        ("output tokens", f"at most {e.requests * e.max_completion_tokens:,} "
                          f"({e.max_completion_tokens} per request)"),
    ]
    if e.limits:
        timed = [f"{_duration(minutes)} at {e.limits[name]:,} {LIMIT_UNITS[name]}"
                 for name, minutes in e.minutes_at_limits()]
        timed[0] += " (the binding limit)"
        rows.append(("at the limits", f"{e.sendable:,} images: " + "; ".join(timed)))
    if e.note:
        rows.append(("note", e.note))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
