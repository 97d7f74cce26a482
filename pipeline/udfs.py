"""The pandas iterator UDFs: prepare images, and call the endpoint with bounded concurrency.

Both are built by factories that close over small frozen settings objects (families, limits,
client settings); the secret inside ClientSettings prints as `Secret(****)`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pandas as pd
from pyspark import TaskContext
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from pipeline.client import CallResult, CaptionClient, ClientSettings
from pipeline.images import Prepared, Rejected, prepare
from pipeline.limits import InputBounds, ModelFamily
from pipeline.packing import (
    apportion_usage,
    packed_spec,
    parse_packed,
    request_room,
    split,
)
from pipeline.payloads import PromptSpec, Usage, caption_parser, chat_body, encode

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
        StructField("request_share", DoubleType()),
    ]
)

# One request of a group (`--group-by`): which images it carried, and its answer.
GROUP_PART = StructType(
    [
        StructField("group_key", StringType()),
        StructField("part", IntegerType()),
        StructField("paths", ArrayType(StringType())),
        StructField("tokens", ArrayType(IntegerType())),
        *CAPTIONED.fields,
    ]
)

# A packed request that fails these ways is asked again one image at a time: the images may
# well be fine alone (an answer that does not map, a request the endpoint refused). Other
# failures (throttling, timeouts, server errors after every retry) would only repeat.
FALL_BACK = {"bad_response", "rejected"}


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
    images_per_request: int = 1  # K > 1 packs K independent images into each request
    max_request_bytes: int = 0  # the family's limit, for packing; unused when K = 1

    def for_partition(self, partition: int) -> ClientSettings:
        budget, tasks = self.client.concurrency, self.tasks
        share = budget // tasks + (1 if partition % tasks < budget % tasks else 0)
        rpm = self.client.rpm / tasks if self.client.rpm else None
        return replace(self.client, concurrency=max(1, share), rpm=rpm)


def failed_row(result: CallResult, images: int = 1) -> dict:
    """A CAPTIONED row for a request that got no usable answer; `images` shared it."""
    return {
        "status": "failed", "caption": None, "response_json": None,
        "prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
        "usage_source": None, "attempts": result.attempts, "latency_ms": result.latency_ms,
        "error_class": result.error_class, "error_message": result.error_message,
        "throttled": result.throttled, "request_share": result.attempts / images,
    }


def caption_row(result: CallResult, spec: PromptSpec, image_tokens: int) -> dict:
    if not result.ok:
        return failed_row(result)
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
        "request_share": float(result.attempts),
    }


async def ask(
    client: CaptionClient,
    plan: CallPlan,
    images: list[tuple[str, bytes]],
    tokens: list[int],
    alone: bool = False,
) -> list[dict]:
    """CAPTIONED rows for `images`, asked in one request: with one answer for them all (one
    image, or `alone` for a group's images and prompt), or packed with an answer per image
    index. A packed answer that does not map one-to-one is asked again image by image; what
    the packed request cost is shared over its images either way."""
    spec = plan.spec
    structured = spec.response_schema is not None
    if len(images) == 1 or alone:
        body = encode(chat_body(spec, images, plan.model))
        result = await client.call(body, caption_parser(spec.caption_field, structured))
        return [caption_row(result, spec, sum(tokens))]
    count = len(images)
    body = encode(chat_body(packed_spec(spec, count), images, plan.model))
    result = await client.call(body, functools.partial(parse_packed, count=count, spec=spec))
    packed = result.answer
    if packed is not None and packed.answers is not None:
        shares = apportion_usage(packed.usage, tokens)
        return [
            _packed_row(result, spec, answer, share, token, count)
            for answer, share, token in zip(packed.answers, shares or [None] * count, tokens,
                                            strict=True)
        ]
    if not result.ok and result.error_class not in FALL_BACK:
        return [failed_row(result, count) for _ in images]
    singles = await asyncio.gather(*(ask(client, plan, [image], [t])
                                     for image, t in zip(images, tokens, strict=True)))
    paid = apportion_usage(packed.usage, tokens) if packed is not None else None
    return [
        _with_packed_attempt(rows[0], result, count, paid[i] if paid else None)
        for i, rows in enumerate(singles)
    ]


def _packed_row(
    result: CallResult, spec: PromptSpec, answer, share: Usage | None, token: int, count: int
) -> dict:
    """A row answered inside a packed request: its answer, its share of the usage."""
    single = CallResult(replace(answer, usage=share or Usage(None, None, None)), None, None,
                        result.attempts, result.latency_ms, result.throttled)
    row = caption_row(single, spec, token)
    if share is not None:
        row["usage_source"] = "apportioned"
    row["request_share"] = result.attempts / count
    return row


def _with_packed_attempt(row: dict, packed: CallResult, count: int, paid: Usage | None) -> dict:
    """A row asked alone after its packed request did not map: it also took part in that
    request, and carries its share of what that request cost."""
    row = {**row, "attempts": row["attempts"] + packed.attempts,
           "request_share": row["request_share"] + packed.attempts / count,
           "throttled": row["throttled"] + packed.throttled}
    if paid is not None:
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            row[key] = (row[key] or 0) + getattr(paid, key)
        row["usage_source"] = "apportioned"
    return row


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


@contextmanager
def _task_session(plan: CallPlan) -> Iterator[tuple[_LoopThread, CaptionClient, deque]]:
    """One Spark task's client on its own event loop, within the task's share of the budget,
    and the queue of futures the task has in flight, cancelled if the task ends early."""
    context = TaskContext.get()
    settings = plan.for_partition(context.partitionId() if context else 0)
    with _LoopThread() as runner:
        client = CaptionClient(settings)
        runner.submit(client.__aenter__()).result()
        pending: deque[list[Future]] = deque()
        try:
            yield runner, client, pending
        finally:
            for futures in pending:
                for future in futures:
                    future.cancel()
            runner.submit(client.__aexit__(None, None, None)).result(timeout=10)


def caption_udf(plan: CallPlan):
    spec = plan.spec
    room, per_image = (
        request_room(packed_spec(spec, plan.images_per_request), plan.max_request_bytes,
                     plan.model)
        if plan.images_per_request > 1 else (0, 0)
    )

    def packs(images: pd.Series) -> list[list[int]]:
        if plan.images_per_request == 1:
            return [[i] for i in range(len(images))]
        return split([len(image) for image in images], plan.images_per_request, room, per_image)

    @pandas_udf(CAPTIONED)
    def caption_images(
        batches: Iterator[tuple[pd.Series, pd.Series, pd.Series]],
    ) -> Iterator[pd.DataFrame]:
        with _task_session(plan) as (runner, client, pending):

            def finished(futures: list[Future]) -> pd.DataFrame:
                rows = [row for f in futures for row in f.result()]
                return pd.DataFrame(rows, columns=CAPTIONED.names)

            for images, mimes, tokens in batches:
                pending.append([
                    runner.submit(ask(
                        client, plan,
                        [(mimes.iat[i], bytes(images.iat[i])) for i in pack],
                        [int(tokens.iat[i]) for i in pack],
                    ))
                    for pack in packs(images)
                ])
                # Keep one batch of read-ahead in flight so the semaphore stays full
                # across batch boundaries; answer batches in their input order.
                while len(pending) > 1:
                    yield finished(pending.popleft())
            while pending:
                yield finished(pending.popleft())

    return caption_images.asNondeterministic()


async def ask_group(
    client: CaptionClient, plan: CallPlan, key: str, members: list[tuple], limits: tuple
) -> list[dict]:
    """GROUP_PART rows for one group's members (path, mime, image, tokens), in path order:
    one request with the group prompt, or several when the model's limits say so."""
    max_images, room, per_image = limits
    parts = split([len(m[2]) for m in members], max_images, room, per_image)

    async def one(number: int, indexes: list[int]) -> dict:
        chosen = [members[i] for i in indexes]
        tokens = [int(m[3]) for m in chosen]
        row = (await ask(client, plan, [(m[1], bytes(m[2])) for m in chosen], [sum(tokens)],
                         alone=True))[0]
        return {**row, "group_key": key, "part": number, "paths": [m[0] for m in chosen],
                "tokens": tokens}

    return list(await asyncio.gather(*(one(n, ix) for n, ix in enumerate(parts, 1))))


def group_udf(plan: CallPlan, max_images: int):
    """A mapInPandas function over members sorted by (group_key, path) within each partition:
    each group is asked as soon as its last member is read, all groups of the task at once
    within the task's share of the budget."""
    room, per_image = request_room(plan.spec, plan.max_request_bytes, plan.model)
    limits = (max_images, room, per_image)

    def ask_groups(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with _task_session(plan) as (runner, client, pending):
            key, members = None, []

            def submit() -> None:
                pending.append([runner.submit(ask_group(client, plan, key, members, limits))])

            def finished(futures: list[Future]) -> pd.DataFrame:
                return pd.DataFrame(futures[0].result(), columns=GROUP_PART.names)

            for frame in frames:
                for row in frame.itertuples(index=False):
                    if members and row.group_key != key:
                        submit()
                        members = []
                    key = row.group_key
                    members.append((row.path, row.mime, row.image, row.estimated_image_tokens))
                # Bound what is held: answer the oldest groups once enough are in flight.
                while len(pending) > 2 * client.settings.concurrency:
                    yield finished(pending.popleft())
            if members:
                submit()
            while pending:
                yield finished(pending.popleft())

    return ask_groups
