"""`vision-batch estimate`: the run's listing, checks and preparation, without a request.

It answers "what would this cost and what would be refused" before anything is paid for:
counts by status and error class, requests (one per distinct image), and the image tokens
the model family's formula gives for what would be sent.

It also warns when max_tokens is below what the answers need, from what it can know
(`max_tokens_warnings`): the response schema's least answer (a certain cut below it), and
the answers earlier runs got to the same prompt from the same endpoint, at any max_tokens
(`answer_lengths`: the table's complete single-image answers and the ones cut off).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.config import ConfigError, RunConfig
from pipeline.endpoint.pacing import NAMES, UNITS
from pipeline.endpoint.payloads import PromptSpec, text_tokens
from pipeline.endpoint.schemas import least_answer
from pipeline.files import source
from pipeline.outcomes import ErrorClass, Status
from pipeline.runs import plan
from pipeline.runs.context import RunContext, context
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
    warnings: list[str] = field(default_factory=list)  # max_tokens below what answers need

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
    lengths = None
    if ctx.tables is not None and result.sendable:
        budget = ctx.spec.max_tokens // config.images_per_request
        lengths = answer_lengths(spark.table(ctx.tables.captions),
                                 _runs(spark, ctx.tables.runs, ctx.endpoint), ctx, budget)
    result.warnings = max_tokens_warnings(ctx.spec, config.images_per_request, ctx.endpoint,
                                          lengths)
    return result


# Earlier answers are a guide once there are this many; a warning when more than this share
# of them needed more than max_tokens allows (the p95 then lies above it).
MIN_ANSWERS = 20
LONGER_SHARE = 0.05


@dataclass(frozen=True)
class AnswerLengths:
    """What earlier answers to the same prompt from the same endpoint needed."""

    answers: int  # complete single-image answers that reported usage, and cut-off ones
    longer: int  # of those, how many needed more tokens than the budget asked now
    p95: int | None  # completion tokens of the complete ones, their 95th percentile


def _runs(spark: SparkSession, runs_table: str, endpoint: str) -> list[dict[str, Any]]:
    """The runs rows of `endpoint` (prompt_id, config_json): few, whatever the table."""
    if not spark.catalog.tableExists(runs_table):
        return []
    rows = (spark.table(runs_table).filter(F.col("endpoint") == endpoint)
            .select("prompt_id", "config_json").collect())
    return [r.asDict() for r in rows]


def same_prompt(ctx: RunContext, runs: list[dict[str, Any]]) -> dict[str, int]:
    """{prompt_id: its max_tokens} of the runs that asked the same question as this one (the
    same prompt text, response schema file and caption field, not grouped) at any max_tokens;
    this run's own prompt_id always."""
    spec = ctx.spec
    same = {ctx.prompt_id: spec.max_tokens}
    for run in runs:
        try:
            config = json.loads(run.get("config_json") or "{}")
        except ValueError:
            continue
        if (run.get("prompt_id") and config.get("prompt") == spec.prompt
                and not config.get("group_by")
                and config.get("response_schema") == ctx.config.response_schema
                and config.get("caption_field", "caption") == spec.caption_field
                and isinstance(config.get("max_tokens"), int)):
            same[run["prompt_id"]] = config["max_tokens"]
    return same


def answer_lengths(captions: DataFrame, runs: list[dict[str, Any]], ctx: RunContext,
                   budget: int) -> AnswerLengths:
    """One aggregation over the captions rows of the same endpoint and prompt (any
    max_tokens): the complete answers asked one image a request with the endpoint's usage
    (a packed row's tokens are a share, not its answer's length), and those cut off at a
    max_tokens of at least `budget` (they needed more than it)."""
    same = same_prompt(ctx, runs)
    cut_at_least = [pid for pid, limit in same.items() if limit >= budget]
    tokens = F.col("completion_tokens")
    complete = ((F.col("status") == Status.OK.value) & (F.col("usage_source") == "endpoint")
                & tokens.isNotNull())
    cut = ((F.col("error_class") == ErrorClass.CUT_OFF.value)
           & F.col("prompt_id").isin(cut_at_least))
    row = (captions.filter((F.col("endpoint") == ctx.endpoint)
                           & F.col("prompt_id").isin(list(same)))
           .agg(F.sum(complete.cast("int")).alias("complete"),
                F.sum((complete & (tokens > budget)).cast("int")).alias("longer"),
                F.sum(cut.cast("int")).alias("cut"),
                F.percentile_approx(F.when(complete, tokens), 0.95).alias("p95"))
           .first())
    complete_n, longer, cut_n = (int(row[k] or 0) if row else 0
                                 for k in ("complete", "longer", "cut"))
    p95 = row["p95"] if row and complete_n else None
    return AnswerLengths(complete_n + cut_n, longer + cut_n, None if p95 is None else int(p95))


def max_tokens_warnings(spec: PromptSpec, images: int, endpoint: str,
                        lengths: AnswerLengths | None) -> list[str]:
    """Why max_tokens looks too low for the answers asked, one line each; none when it is
    not known to be. `images` answers share a request's max_tokens when packed."""
    warnings = []
    budget = spec.max_tokens // images
    each = " for each image of a pack" if images > 1 else ""
    if spec.response_schema is not None:
        least = text_tokens(json.dumps(least_answer(spec.response_schema)))
        if budget < least:
            warnings.append(
                f"--max-tokens {spec.max_tokens} leaves {budget} tokens{each}, fewer than even "
                f"the shortest answer the response schema allows (about {least}): every "
                "answer would be cut off")
    if lengths is not None and lengths.answers >= MIN_ANSWERS \
            and lengths.longer > LONGER_SHARE * lengths.answers:
        typical = (f"the complete ones' p95 is {lengths.p95} tokens" if lengths.p95 is not None
                   else "none was complete")
        warnings.append(
            f"{lengths.longer:,} of {lengths.answers:,} earlier answers to this prompt from "
            f"{endpoint} needed more than the {budget} tokens --max-tokens {spec.max_tokens} "
            f"leaves{each} ({typical}): about {lengths.longer / lengths.answers:.0%} of the "
            "answers would be cut off; raise --max-tokens")
    return warnings


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
    rows += [("warning", text) for text in e.warnings]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
