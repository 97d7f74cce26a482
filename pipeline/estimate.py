"""`vision-batch estimate`: the run's listing, checks and preparation, without a request.

It answers "what would this cost and what would be refused" before anything is paid for:
counts by status and error class, requests (one per distinct image), and the image tokens
the model family's formula gives for what would be sent.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline import sink
from pipeline.config import ConfigError, RunConfig
from pipeline.run import Held, RunResult, context, plan_batches, prepare_batch
from pipeline.spark import get_spark


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
    spark = spark or get_spark()
    ctx = context(config, spark, tables=sink.find(spark, config.table))
    result = Estimate(
        ctx.endpoint, ctx.family.name, ctx.prompt_id,
        text_tokens_per_request=math.ceil(len(ctx.spec.prompt) / 4),
        max_completion_tokens=ctx.spec.max_tokens,
    )
    listed = RunResult(ctx.run_id, config.table)
    todo, _, batches = plan_batches(spark, ctx, listed)
    result.listed, result.skipped = listed.listed, listed.skipped
    seen: set[str] = set()
    for number in range(batches):
        rows = todo.filter(F.col("batch") == number).collect()
        held = Held()
        prepared = prepare_batch(spark, ctx, rows, held)
        valid = prepared.filter(F.col("error_class").isNull())
        for r in valid.groupBy("content_sha256").agg(
            F.first("estimated_image_tokens").alias("tokens"), F.count("*").alias("files")
        ).collect():
            result.sendable += r["files"]
            if r["content_sha256"] not in seen:  # same bytes in two batches: one request
                seen.add(r["content_sha256"])
                result.requests += 1
                result.image_tokens += r["tokens"]
        result.error_classes.update(
            {r["error_class"]: r["count"] for r in prepared.filter(
                F.col("error_class").isNotNull()).groupBy("error_class").count().collect()}
        )
        held.release()
    if config.images_per_request > 1:  # packs of K; the byte limit may cut a few more
        result.requests = math.ceil(result.requests / config.images_per_request)
        result.packed = config.images_per_request
    return result


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
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
