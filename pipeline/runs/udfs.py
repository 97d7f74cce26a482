"""The Spark adapters: the schemas rows travel in, the prepare UDF, and the function that
asks the endpoint from inside Spark tasks (the executor caller).

The asking itself is pipeline/endpoint/asking.py; here it only meets pandas and Spark's types.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager

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

from pipeline.endpoint import asking
from pipeline.endpoint.asking import CallPlan, LoopThread, Member
from pipeline.endpoint.client import CaptionClient
from pipeline.images.limits import InputBounds, ModelFamily
from pipeline.images.prepare import Prepared, Rejected, prepare
from pipeline.spark import in_worker

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

_TYPES = {"prompt_tokens": IntegerType(), "completion_tokens": IntegerType(),
          "total_tokens": IntegerType(), "attempts": IntegerType(), "latency_ms": IntegerType(),
          "throttled": IntegerType(), "request_share": DoubleType(),
          **dict.fromkeys(asking.HELD, DoubleType())}
CAPTIONED = StructType([StructField(n, _TYPES.get(n, StringType())) for n in asking.CAPTIONED])
# Which attempt of its Spark task asked: above 0, attempts before it were lost with their
# executor, and may have paid for the same units (counted in the run's totals as a bound).
TASK_ATTEMPT = StructField("task_attempt", IntegerType())
# One image's answer, as an asking task returns it.
ANSWERED = StructType([StructField("path", StringType()), *CAPTIONED.fields, TASK_ATTEMPT])
GROUP_PART = StructType(
    [
        StructField("group_key", StringType()),
        StructField("part", IntegerType()),
        StructField("paths", ArrayType(StringType())),
        StructField("tokens", ArrayType(IntegerType())),
        *CAPTIONED.fields,
        TASK_ATTEMPT,
    ]
)
# The columns an asking task reads (group_key only for groups).
MEMBER_COLUMNS = ("path", "mime", "image", "estimated_image_tokens")


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
    # PySpark's stubs type only the functionType forms, not a return type with type hints.
    @pandas_udf(PREPARED)  # type: ignore[call-overload]
    def prepare_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        in_worker()
        for contents in batches:
            rows = [prepared_row(c, family, bounds, max_bytes) for c in contents]
            yield pd.DataFrame(rows, columns=PREPARED.names)

    return prepare_images


def members(frames: Iterator[pd.DataFrame]) -> Iterator[Member]:
    """Rows of MEMBER_COLUMNS (and group_key) as Members, in order."""
    for frame in frames:
        keys = frame["group_key"] if "group_key" in frame else [None] * len(frame)
        for path, mime, image, tokens, key in zip(frame["path"], frame["mime"], frame["image"],
                                                  frame["estimated_image_tokens"], keys,
                                                  strict=True):
            yield Member(path, mime, bytes(image), int(tokens), key)


@contextmanager
def _task_session(plan: CallPlan) -> Iterator[tuple[LoopThread, CaptionClient]]:
    """One Spark task's client on its own event loop, within the task's share of the budget."""
    context = TaskContext.get()
    settings = plan.for_partition(context.partitionId() if context else 0)
    with LoopThread() as runner:
        client = CaptionClient(settings)
        runner.submit(client.__aenter__()).result()
        try:
            yield runner, client
        finally:
            runner.submit(client.__aexit__(None, None, None)).result(timeout=10)


def ask_in_tasks(plan: CallPlan):
    """A mapInPandas function: each Spark task asks for its rows (sorted by group for groups)
    with its own client, and returns one row per image (ANSWERED) or per request of a group
    (GROUP_PART). The schema to pass along is `answer_schema(plan)`."""
    names = answer_schema(plan).names

    def asking_task(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        in_worker()
        context = TaskContext.get()
        attempt = {"task_attempt": context.attemptNumber() if context else 0}
        with _task_session(plan) as (runner, client):
            pending: deque[Future] = deque()
            done: list[dict] = []
            try:
                for unit in plan.units(members(frames)):
                    pending.append(runner.submit(plan.ask(client, unit)))
                    # Bound what is held: answer the oldest units once enough are in flight.
                    while len(pending) > 2 * client.settings.concurrency:
                        done.extend({**r, **attempt} for r in pending.popleft().result())
                    if len(done) >= 256:
                        yield pd.DataFrame(done, columns=names)
                        done = []
                while pending:
                    done.extend({**r, **attempt} for r in pending.popleft().result())
                yield pd.DataFrame(done, columns=names)
            finally:
                for future in pending:  # the task ended early: stop asking
                    future.cancel()

    return asking_task


def answer_schema(plan: CallPlan) -> StructType:
    return GROUP_PART if plan.group_images else ANSWERED
