"""The pandas iterator UDFs: prepare images, and call the endpoint with bounded concurrency.

Both are built by factories that close over small frozen settings objects (families, limits,
client settings); the secret inside ClientSettings prints as `Secret(****)`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace

import pandas as pd
from pyspark import TaskContext
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from pipeline.client import CallResult, CaptionClient, ClientSettings
from pipeline.images import Prepared, Rejected, prepare
from pipeline.limits import InputBounds, ModelFamily
from pipeline.payloads import PromptSpec, chat_body, encode

PREPARED = StructType(
    [
        StructField("content_sha256", StringType()),
        StructField("format", StringType()),
        StructField("width", IntegerType()),
        StructField("height", IntegerType()),
        StructField("sent_width", IntegerType()),
        StructField("sent_height", IntegerType()),
        StructField("sent_bytes", IntegerType()),
        StructField("image", BinaryType()),
        StructField("mime", StringType()),
        StructField("error_class", StringType()),
        StructField("error_message", StringType()),
        StructField("estimated_image_tokens", IntegerType()),
    ]
)

CAPTIONED = StructType(
    [
        StructField("status", StringType()),
        StructField("caption", StringType()),
        StructField("response_json", StringType()),
        StructField("prompt_tokens", IntegerType()),
        StructField("completion_tokens", IntegerType()),
        StructField("total_tokens", IntegerType()),
        StructField("usage_source", StringType()),
        StructField("attempts", IntegerType()),
        StructField("latency_ms", IntegerType()),
        StructField("error_class", StringType()),
        StructField("error_message", StringType()),
        StructField("throttled", IntegerType()),
    ]
)


def prepared_row(
    content: bytes, family: ModelFamily, bounds: InputBounds, max_bytes: int
) -> dict:
    """One PREPARED row for one file's bytes."""
    result = prepare(content, family, bounds, max_bytes)
    return outcome_row(result, family, hashlib.sha256(content).hexdigest())


def outcome_row(result: Prepared | Rejected, family: ModelFamily, sha256: str | None) -> dict:
    """A PREPARED row for an outcome; `sha256` is None for files whose bytes were never read."""
    row = dict.fromkeys(PREPARED.names)
    row.update(content_sha256=sha256, format=result.format, width=result.width,
               height=result.height)
    if isinstance(result, Rejected):
        row.update(error_class=result.error_class, error_message=result.message,
                   estimated_image_tokens=0)
        return row
    row.update(
        sent_width=result.sent_width,
        sent_height=result.sent_height,
        sent_bytes=result.sent_bytes,
        image=result.data,
        mime=result.mime,
        estimated_image_tokens=family.image_tokens(result.sent_width, result.sent_height),
    )
    return row


def prepare_udf(family: ModelFamily, bounds: InputBounds, max_bytes: int):
    @pandas_udf(PREPARED)
    def prepare_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for contents in batches:
            rows = [prepared_row(c, family, bounds, max_bytes) for c in contents]
            yield pd.DataFrame(rows, columns=PREPARED.names)

    return prepare_images


@dataclass(frozen=True)
class CallPlan:
    """How the run's request budget is shared by the caption tasks that run at once."""

    client: ClientSettings  # with concurrency and rpm for the whole run
    spec: PromptSpec
    model: str | None  # sent as `model` for OpenAI-style URLs
    tasks: int  # caption partitions; all run at once

    def for_partition(self, partition: int) -> ClientSettings:
        budget, tasks = self.client.concurrency, self.tasks
        share = budget // tasks + (1 if partition % tasks < budget % tasks else 0)
        rpm = self.client.rpm / tasks if self.client.rpm else None
        return replace(self.client, concurrency=max(1, share), rpm=rpm)


def caption_row(result: CallResult, spec: PromptSpec, image_tokens: int) -> dict:
    if not result.ok:
        return {
            "status": "failed", "caption": None, "response_json": None,
            "prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
            "usage_source": None, "attempts": result.attempts, "latency_ms": result.latency_ms,
            "error_class": result.error_class, "error_message": result.error_message,
            "throttled": result.throttled,
        }
    answer = result.answer
    usage, source = answer.usage, "endpoint"
    if usage.prompt_tokens is None or usage.completion_tokens is None:
        prompt = image_tokens + math.ceil(len(spec.prompt) / 4)
        completion = math.ceil(len(answer.response_json or answer.caption) / 4)
        usage, source = type(usage)(prompt, completion, prompt + completion), "estimated"
    return {
        "status": "ok", "caption": answer.caption, "response_json": answer.response_json,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens
        if usage.total_tokens is not None
        else usage.prompt_tokens + usage.completion_tokens,
        "usage_source": source, "attempts": result.attempts, "latency_ms": result.latency_ms,
        "error_class": None, "error_message": None, "throttled": result.throttled,
    }


class _LoopThread:
    """An asyncio loop in a daemon thread, so a synchronous UDF iterator can feed it."""

    def __enter__(self) -> _LoopThread:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return self

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def caption_udf(plan: CallPlan):
    spec = plan.spec
    structured = spec.response_schema is not None

    @pandas_udf(CAPTIONED)
    def caption_images(
        batches: Iterator[tuple[pd.Series, pd.Series, pd.Series]],
    ) -> Iterator[pd.DataFrame]:
        context = TaskContext.get()
        settings = plan.for_partition(context.partitionId() if context else 0)
        with _LoopThread() as runner:
            client = CaptionClient(settings)
            runner.submit(client.__aenter__()).result()
            pending: deque[tuple[list[Future], pd.Series]] = deque()

            def finished(futures: list[Future], tokens: pd.Series) -> pd.DataFrame:
                pairs = zip(futures, tokens, strict=True)
                rows = [caption_row(f.result(), spec, int(t)) for f, t in pairs]
                return pd.DataFrame(rows, columns=CAPTIONED.names)

            try:
                for images, mimes, tokens in batches:
                    futures = [
                        runner.submit(
                            client.call(
                                encode(chat_body(spec, [(mime, bytes(image))], plan.model)),
                                spec.caption_field,
                                structured,
                            )
                        )
                        for image, mime in zip(images, mimes, strict=True)
                    ]
                    pending.append((futures, tokens))
                    # Keep one batch of read-ahead in flight so the semaphore stays full
                    # across batch boundaries; answer batches in their input order.
                    while len(pending) > 1:
                        yield finished(*pending.popleft())
                while pending:
                    yield finished(*pending.popleft())
            finally:
                for futures, _ in pending:
                    for f in futures:
                        f.cancel()
                runner.submit(client.__aexit__(None, None, None)).result(timeout=10)

    return caption_images.asNondeterministic()
