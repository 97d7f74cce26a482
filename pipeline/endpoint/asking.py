"""Asking the endpoint: one image, a pack of independent images, or a group, and the answer
rows each gives. No Spark here: the same code runs inside a Spark task (the executor caller)
and on the driver (the driver caller), each with its own `CaptionClient`.

A `CallPlan` is the small, picklable descriptor of how to ask: the client settings (the
secret inside prints as `Secret(****)`), the prompt, how images travel (alone, packed K at a
time, or as groups) and how the run's concurrency budget is shared by the tasks that ask.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from pipeline.endpoint.client import CallResult, CaptionClient, ClientSettings
from pipeline.endpoint.pacing import HELD, NAMES, Cost
from pipeline.endpoint.packing import (
    apportion_usage,
    packed_spec,
    parse_packed,
    request_room,
    split,
)
from pipeline.endpoint.payloads import (
    Answer,
    PromptSpec,
    Usage,
    answer_parser,
    chat_body,
    encode,
    text_tokens,
)
from pipeline.outcomes import DEFERRED, ErrorClass, Status

# The answer fields of one image (the captions table's, plus `throttled`, `request_share` and
# HELD for the run's totals).
CAPTIONED = ("status", "caption", "response_json", "prompt_tokens", "completion_tokens",
             "total_tokens", "usage_source", "attempts", "latency_ms", "error_class",
             "error_message", "finish_reason", "throttled", "request_share", *HELD)
# One request of a group: which images it carried, then its answer.
GROUP_PART = ("group_key", "part", "paths", "tokens", *CAPTIONED)

# A packed request that fails these ways is asked again one image at a time: the images may
# well be fine alone (an answer that does not map, a request the endpoint refused). Other
# failures (throttling, timeouts, server errors after every retry) would only repeat.
FALL_BACK = {ErrorClass.BAD_RESPONSE, ErrorClass.REJECTED}


class Member(NamedTuple):
    """One prepared image on its way to the endpoint."""

    path: str
    mime: str
    image: bytes
    tokens: int  # estimated image tokens (the family's formula on what is sent)
    group_key: str | None = None


@dataclass(frozen=True)
class CallPlan:
    """How a run asks: the request shape, and the share of the budget each asking task gets."""

    client: ClientSettings  # with concurrency and rpm for the whole run
    spec: PromptSpec
    model: str | None  # sent as `model` for OpenAI-style URLs
    tasks: int = 1  # Spark tasks that ask at once (1 on the driver)
    images_per_request: int = 1  # K > 1 packs K independent images into each request
    max_request_bytes: int = 0  # the family's limit, for packs and groups
    group_images: int = 0  # > 0: members arrive by group, at most this many per request

    def for_partition(self, partition: int) -> ClientSettings:
        budget, tasks = self.client.concurrency, self.tasks
        share = budget // tasks + (1 if partition % tasks < budget % tasks else 0)
        rpm = self.client.rpm / tasks if self.client.rpm else None
        limits = replace(self.client.limits, share=1 / tasks)
        return replace(self.client, concurrency=max(1, share), rpm=rpm, limits=limits)

    @functools.cached_property
    def room(self) -> tuple[int, int]:
        spec = self.spec if self.group_images else packed_spec(self.spec,
                                                               self.images_per_request)
        return request_room(spec, self.max_request_bytes, self.model)

    def units(self, members: Iterable[Member]) -> Iterator[list[Member]]:
        """What each request carries, from members in arrival order: a whole group (members
        sorted by group), a pack of up to K images that fits a request, or one image."""
        if self.group_images:
            yield from _by_group(members)
            return
        if self.images_per_request == 1:
            for member in members:
                yield [member]
            return
        buffer: list[Member] = []
        for member in members:
            buffer.append(member)
            if len(buffer) == self.images_per_request:
                yield from self._packs(buffer)
                buffer = []
        if buffer:
            yield from self._packs(buffer)

    def _packs(self, members: list[Member]) -> Iterator[list[Member]]:
        room, per_image = self.room
        for part in split([len(m.image) for m in members], self.images_per_request, room,
                          per_image):
            yield [members[i] for i in part]

    async def ask(self, client: CaptionClient, unit: list[Member]) -> list[dict[str, Any]]:
        """Answer rows for one unit: GROUP_PART rows for a group, else one row per image
        (its `path` and the CAPTIONED fields)."""
        if self.group_images:
            return await ask_group(client, self, unit[0].group_key or "", unit)
        rows = await ask(client, self, [(m.mime, m.image) for m in unit],
                         [m.tokens for m in unit])
        return [{**row, "path": m.path} for row, m in zip(rows, unit, strict=True)]


def _by_group(members: Iterable[Member]) -> Iterator[list[Member]]:
    group: list[Member] = []
    for member in members:
        if group and member.group_key != group[0].group_key:
            yield group
            group = []
        group.append(member)
    if group:
        yield group


def held(result: CallResult, images: int = 1) -> dict[str, float]:
    """The HELD fields of one of `images` that shared a request."""
    return {field: result.held_s.get(name, 0.0) / images for name, field in zip(NAMES, HELD,
                                                                                  strict=True)}


def cost(spec: PromptSpec, image_tokens: int) -> Cost:
    """What a request takes from the token limits: its estimated input, its max_tokens."""
    return Cost(text_tokens(spec.prompt) + image_tokens, spec.max_tokens)


def failed_row(result: CallResult, images: int = 1) -> dict:
    """A CAPTIONED row for a request that got no usable answer, or was put off (DEFERRED);
    `images` shared it."""
    return {**held(result, images),
        "status": DEFERRED if result.deferred else Status.FAILED,
        "caption": None, "response_json": None,
        "prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
        "usage_source": None, "attempts": result.attempts, "latency_ms": result.latency_ms,
        "error_class": result.error_class, "error_message": result.error_message,
        "finish_reason": None, "throttled": result.throttled,
        "request_share": result.attempts / images,
    }


def estimated(spec: PromptSpec, image_tokens: int, answers: Iterable[Any]) -> Usage:
    """What a request whose answer reported no usage is taken to have cost: its prompt text
    once and its images in, the text of its answers out."""
    prompt = image_tokens + text_tokens(spec.prompt)
    completion = sum(text_tokens(a.response_json or a.caption) for a in answers)
    return Usage(prompt, completion, prompt + completion)


def unusable(answer: Answer, spec: PromptSpec) -> tuple[ErrorClass, str] | None:
    """Why an answer that arrived is no caption, by its finish reason; None when it is one.
    Cut off at max_tokens: a failed row, never a complete-looking caption, and not asked again
    in this run (the same max_tokens would cut it the same way); a rerun asks failed rows
    again, with a higher --max-tokens if the user raised it."""
    if answer.cut_off:
        return ErrorClass.CUT_OFF, (
            f"The answer was cut off at max_tokens ({spec.max_tokens}): raise --max-tokens "
            "and run again to ask it again.")
    if answer.refused:
        said = " ".join(answer.caption.split())
        said = said if len(said) <= 200 else said[:197] + "..."
        return ErrorClass.REFUSED, (
            f"The model refused to answer (finish_reason {answer.finish_reason!r})"
            + (f": {said}" if said else "."))
    return None


def caption_row(result: CallResult, spec: PromptSpec, image_tokens: int) -> dict:
    if not result.ok:
        return failed_row(result)
    answer = result.answer
    usage, source = answer.usage, "endpoint"
    if not usage.reported:
        usage, source = estimated(spec, image_tokens, [answer]), "estimated"
    row = {
        **held(result),
        "status": Status.OK, "caption": answer.caption, "response_json": answer.response_json,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens
        if usage.total_tokens is not None
        else usage.prompt_tokens + usage.completion_tokens,
        "usage_source": source, "attempts": result.attempts, "latency_ms": result.latency_ms,
        "error_class": None, "error_message": None, "finish_reason": answer.finish_reason,
        "throttled": result.throttled, "request_share": float(result.attempts),
    }
    why = unusable(answer, spec)
    if why is not None:  # paid for (its tokens stay on the row), but no caption
        row.update(status=Status.FAILED, caption=None, response_json=None,
                   error_class=why[0], error_message=why[1])
    return row


async def ask(
    client: CaptionClient,
    plan: CallPlan,
    images: list[tuple[str, bytes]],
    tokens: list[int],
    alone: bool = False,
) -> list[dict]:
    """CAPTIONED rows for `images`, asked in one request: with one answer for them all (one
    image, or `alone` for a group's images and prompt), or packed with an answer per image
    index. Each entry of a packed answer stands on its own: an image whose entry is missing,
    cut off, unusable or off the schema is asked again alone (one single-image request, with
    its own retries), the others keep theirs; when no entry can be trusted, or the packed
    request failed in a way a smaller one may not, every image is asked alone. What the
    packed request cost is shared over all its images either way."""
    spec = plan.spec
    if len(images) == 1 or alone:
        body = encode(chat_body(spec, images, plan.model))
        result = await client.call(body, answer_parser(spec), cost(spec, sum(tokens)))
        return [caption_row(result, spec, sum(tokens))]
    count = len(images)
    packed_as = packed_spec(spec, count)
    body = encode(chat_body(packed_as, images, plan.model))
    result = await client.call(body, functools.partial(parse_packed, count=count, spec=spec),
                               cost(packed_as, sum(tokens)))
    packed = result.answer
    if packed is None and (result.deferred or result.error_class not in FALL_BACK):
        return [failed_row(result, count) for _ in images]
    rows: list[dict | None] = [None] * count
    again = list(range(count))
    paid: list[Usage] | None = None
    if packed is not None and packed.answers is not None:
        usage, source = packed.usage, "apportioned"
        if not usage.reported:  # estimated for the request (its prompt once), then shared
            usage = estimated(packed_as, sum(tokens), [a for a in packed.answers if a])
            source = "estimated"
        shares = apportion_usage(usage, tokens)
        assert shares is not None  # usage has both counts
        for i, answer in enumerate(packed.answers):
            if answer is not None:
                rows[i] = _packed_row(result, spec, answer, shares[i], tokens[i], count, source)
        again = packed.again
        paid = shares if source == "apportioned" else None
    elif packed is not None:  # no entry trusted: what the request reported is shared
        paid = apportion_usage(packed.usage, tokens)
    singles = await asyncio.gather(*(ask(client, plan, [images[i]], [tokens[i]])
                                     for i in again))
    for i, single in zip(again, singles, strict=True):
        rows[i] = _with_packed_attempt(single[0], result, count, paid[i] if paid else None)
    done = [row for row in rows if row is not None]
    assert len(done) == count  # every image answered in the pack or alone
    return done


def _packed_row(result: CallResult, spec: PromptSpec, answer: Any, share: Usage, token: int,
                count: int, source: str) -> dict:
    """A row answered inside a packed request: its answer, its share of the usage (reported,
    or estimated for the whole request)."""
    single = CallResult(replace(answer, usage=share), None, None,
                        result.attempts, result.latency_ms, result.throttled, result.held_s)
    row = caption_row(single, spec, token)
    row["usage_source"] = source
    row["request_share"] = result.attempts / count
    return {**row, **held(result, count)}


def _with_packed_attempt(row: dict, packed: CallResult, count: int, paid: Usage | None) -> dict:
    """A row asked alone after its packed request did not map: it also took part in that
    request, and carries its share of what that request cost."""
    row = {**row, "attempts": row["attempts"] + packed.attempts,
           "request_share": row["request_share"] + packed.attempts / count,
           "throttled": row["throttled"] + packed.throttled,
           **{k: v + row[k] for k, v in held(packed, count).items()}}
    if paid is not None:
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            row[key] = (row[key] or 0) + getattr(paid, key)
        row["usage_source"] = "apportioned"
    return row


async def ask_group(
    client: CaptionClient, plan: CallPlan, key: str, members: list[Member]
) -> list[dict]:
    """GROUP_PART rows for one group's members, in path order: one request with the group
    prompt, or several when the model's limits say so."""
    room, per_image = plan.room
    parts = split([len(m.image) for m in members], plan.group_images, room, per_image)

    async def one(number: int, indexes: list[int]) -> dict:
        chosen = [members[i] for i in indexes]
        tokens = [int(m.tokens) for m in chosen]
        row = (await ask(client, plan, [(m.mime, m.image) for m in chosen], [sum(tokens)],
                         alone=True))[0]
        return {**row, "group_key": key, "part": number, "paths": [m.path for m in chosen],
                "tokens": tokens}

    return list(await asyncio.gather(*(one(n, ix) for n, ix in enumerate(parts, 1))))


class LoopThread:
    """An asyncio loop in a daemon thread, so synchronous code (a UDF iterator, the driver's
    batch loop) can hand it coroutines and wait for their results."""

    def __enter__(self) -> LoopThread:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="vision-batch-requests")
        self.thread.start()
        return self

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
