"""What every part of a run shares: the settings resolved once (`RunContext`) and the totals
that grow batch by batch (`RunResult`), counted from the rows in hand, never by a Spark job."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from pipeline.config import ConfigError, RunConfig
from pipeline.endpoint.asking import CallPlan, cost
from pipeline.endpoint.auth import CredentialSource
from pipeline.endpoint.client import ClientSettings
from pipeline.endpoint.pacing import HELD, NAMES, TokenLimits
from pipeline.endpoint.packing import packed_spec
from pipeline.endpoint.payloads import PromptSpec, image_byte_budget
from pipeline.errors import TooManyFailed
from pipeline.images.limits import Catalog, ModelFamily, load_catalog
from pipeline.images.prepare import largest_image_tokens
from pipeline.outcomes import FAILED_CLASSES, ErrorClass, RunStatus, Status
from pipeline.percentiles import percentile_of_counts
from pipeline.progress import by_class
from pipeline.runs.recovery import Recovery
from pipeline.tables import sink


@dataclass(frozen=True)
class RunContext:
    """What every batch needs, resolved once on the driver."""

    config: RunConfig
    catalog: Catalog
    family: ModelFamily
    spec: PromptSpec
    tables: sink.Tables | None  # None for a dry run over a table that does not exist yet
    run_id: str
    client: ClientSettings | None = None  # None for a dry run: no requests
    # Where fresh headers come from, on the driver (never pickled: see endpoint/auth.py).
    # `client` holds one snapshot of them, renewed for each batch an executor asks.
    credentials: CredentialSource | None = None

    @property
    def endpoint(self) -> str:
        return self.config.endpoint or ""

    @property
    def prompt_id(self) -> str:
        return self.spec.prompt_id

    @property
    def model(self) -> str | None:
        return None if "{endpoint}" in self.config.chat_path else self.endpoint

    @property
    def asked_here(self) -> Column:
        """Rows of a captions or groups table that answer this run's endpoint and prompt."""
        return (F.col("endpoint") == self.endpoint) & (F.col("prompt_id") == self.prompt_id)

    @property
    def image_budget(self) -> int:
        return image_byte_budget(
            self.spec, self.family.max_request_bytes, self.family.max_image_bytes, self.model
        )

    def call_plan(self, group_images: int = 0) -> CallPlan:
        assert self.client is not None, "a dry run makes no requests"
        return CallPlan(self.client, self.spec, self.model,
                        images_per_request=self.config.images_per_request,
                        max_request_bytes=self.family.max_request_bytes,
                        group_images=group_images)


def chat_url(config: RunConfig, host: str) -> str:
    return host.rstrip("/") + config.chat_path.replace("{endpoint}", config.endpoint or "")


def context(
    config: RunConfig,
    credentials: CredentialSource | None = None,
    tables: sink.Tables | None = None,
) -> RunContext:
    catalog = load_catalog(config.models_file)
    client = None
    if credentials is not None:
        client = ClientSettings(
            url=chat_url(config, credentials.host),
            credentials=credentials.current(),
            timeout_s=config.request_timeout,
            max_attempts=config.max_attempts,
            concurrency=config.max_concurrency,
            rpm=config.max_rpm,
            limits=TokenLimits(config.max_itpm, config.max_otpm, config.max_qph),
        )
    family = catalog.family(config.endpoint or "", config.model_family)
    if config.images_per_request > family.max_images_per_request:
        raise ConfigError(
            f"images_per_request is {config.images_per_request}, but {family.name} endpoints "
            f"take at most {family.max_images_per_request} images per request (conf/models.yml)"
        )
    spec = config.prompt_spec()
    _check_fits_itpm(config, spec, family)
    return RunContext(
        config=config,
        catalog=catalog,
        family=family,
        spec=spec,
        tables=tables,
        run_id=uuid.uuid4().hex,
        client=client,
        credentials=credentials,
    )


def _check_fits_itpm(config: RunConfig, spec: PromptSpec, family: ModelFamily) -> None:
    """An input-token limit below one request of this run at its largest is a usage error:
    such requests could never be sent. (A group's request holds at least one image; one
    that is larger than the limit fails as `rejected` when it is asked.)"""
    if config.max_itpm is None:
        return
    images = 1 if config.group_by is not None else config.images_per_request
    per_image = largest_image_tokens(family)
    largest = cost(packed_spec(spec, images) if images > 1 else spec, images * per_image)
    if largest.input_tokens > config.max_itpm:
        raise ConfigError(
            f"max_itpm is {config.max_itpm:,}, but one request of this run may need "
            f"{largest.input_tokens:,} input tokens: {images} image(s) of up to {per_image:,} "
            f"tokens ({family.name}'s largest prepared size) and the prompt; raise max_itpm"
            + (" or lower images_per_request" if images > 1 else ""))


@dataclass
class RunResult:
    """A run's totals so far. Times are measured from the start of the command, so the
    summary, the runs table and the report give the same duration."""

    run_id: str
    table: str
    prompt_id: str = ""  # what `compare --pair ENDPOINT:PROMPT_ID` names
    started: float = field(default_factory=time.time)  # epoch seconds
    spark_seconds: float = 0.0  # of which: getting a Spark session
    listed: int = 0
    skipped: int = 0
    statuses: Counter = field(default_factory=Counter)
    error_classes: Counter = field(default_factory=Counter)
    # How the answers this run paid for ended (choices[0].finish_reason: stop, length, ...).
    finish_reasons: Counter = field(default_factory=Counter)
    # The run's max_tokens: what the summary tells users to raise when answers were cut off.
    max_tokens: int | None = None
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    seconds: float = 0.0
    status: RunStatus = RunStatus.RUNNING
    # The command's exit code for this run (pipeline/errors.py), in its runs-table row: None
    # while it runs; 0 or 3 (`exit_code_for`) once it finished; 1, 130 or 143 if not.
    exit_code: int | None = None
    # Seconds the run's requests were held back by each token or query limit (HELD).
    waited: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    # What the run waited out (pipeline/runs/recovery.py): seconds the endpoint was down,
    # files put off and asked again, and the summary's line on them.
    outage_s: float = 0.0
    put_off: int = 0
    waited_out: list[str] = field(default_factory=list)
    # (batch, stage, start, end) in seconds since `started`: where the time went.
    timeline: list[tuple[int, str, float, float]] = field(default_factory=list)
    _shares: float = 0.0
    _retried: float = 0.0
    _lost: float = 0.0
    # Latencies as a count per millisecond (bounded by the request timeout, whatever the
    # number of rows: a run of days holds no list of them).
    _latencies: Counter[int] = field(default_factory=Counter)

    @property
    def written(self) -> int:
        return sum(self.statuses.values())

    @property
    def lost_requests(self) -> int:
        """At most this many more requests were sent by Spark tasks lost with their executor
        (the executor caller): their answers never arrived, and their retries asked again."""
        return round(self._lost)

    @property
    def cut_off(self) -> int:
        """Answers cut off at max_tokens (rows failed as cut_off)."""
        return self.error_classes[ErrorClass.CUT_OFF]

    @property
    def failed(self) -> int:
        return self.statuses[Status.FAILED]

    @property
    def asked(self) -> int:
        """Rows this run sent and wrote an outcome for: ok or failed (invalid rows were never
        sendable, so they are no share of anything)."""
        return self.statuses[Status.OK] + self.failed

    def too_many_failed(self, max_failed_share: float) -> str | None:
        """The one line saying the failed share passed `max_failed_share`, or None when it is
        at or under it (or nothing was asked): counts per file, a group's as its files'."""
        if not self.asked or self.failed / self.asked <= max_failed_share:
            return None
        classes = by_class({k: v for k, v in self.error_classes.items() if k in FAILED_CLASSES})
        return (f"{self.failed} of {self.asked} rows failed in run {self.run_id} "
                f"({100 * self.failed / self.asked:.1f}%, over --max-failed-share "
                f"{100 * max_failed_share:.4g}%)" + (f": {classes}" if classes else ""))

    def exit_code_for(self, max_failed_share: float) -> int:
        """A finished run's exit code: 3 when too many rows failed, else 0."""
        return TooManyFailed.exit_code if self.too_many_failed(max_failed_share) else 0

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    def tick(self) -> float:
        """Seconds since the command started; kept as the run's duration so far."""
        self.seconds = time.time() - self.started
        return self.seconds

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Count rows written to the captions table, as sql/summarize_run.sql would: requests
        by each row's share, and cost, retries and latency over the rows that asked."""
        for row in rows:
            self.statuses[row["status"]] += 1
            if row.get("error_class"):
                self.error_classes[row["error_class"]] += 1
            attempts = row.get("attempts") or 0
            share = row.get("request_share")
            self._shares += attempts if share is None else share
            # Asked by a retry of a Spark task whose earlier attempts were lost (with their
            # executor): those may have paid for this row's requests too, answers lost.
            self._lost += (attempts if share is None else share) * (row.get("task_attempt") or 0)
            for name, key in zip(NAMES, HELD, strict=True):
                self.waited[name] += row.get(key) or 0.0
            if attempts <= 0:
                continue
            self._retried += (attempts if share is None else share) * (attempts - 1) / attempts
            if row.get("finish_reason"):
                self.finish_reasons[row["finish_reason"]] += 1
            self.prompt_tokens += row.get("prompt_tokens") or 0
            self.completion_tokens += row.get("completion_tokens") or 0
            self.total_tokens += row.get("total_tokens") or 0
            if row.get("latency_ms") is not None:
                self._latencies[int(row["latency_ms"])] += 1
        self.requests, self.retries = round(self._shares), round(self._retried)

    def recovered(self, recovery: Recovery) -> None:
        """Take what the run's Recovery waited out into the totals."""
        self.outage_s, self.put_off = recovery.outage_s, recovery.put_off
        self.waited_out = recovery.said()

    def settle_latency(self) -> None:
        """The latency percentiles of the rows counted so far (sorted once, at the end)."""
        self.latency_p50_ms = _ms(percentile_of_counts(self._latencies, 0.5))
        self.latency_p95_ms = _ms(percentile_of_counts(self._latencies, 0.95))


def _ms(value: int | None) -> float | None:
    return None if value is None else float(value)
