"""Several images in one request: how they are split, asked, answered and paid for.

Pure functions. Two users: `--images-per-request K` packs K independent images into one
request whose answer holds one caption per image index, and `--group-by` sends the images of
one group together with a group prompt. Both split at the model's images-per-request and
request-byte limits (conf/models.yml), measured on the prepared images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from pipeline.endpoint.payloads import (
    Answer,
    BadResponse,
    PromptSpec,
    Usage,
    base64_length,
    chat_body,
    encode,
    parse_answer,
)

PACKED_FIELD = "answers"


def request_room(spec: PromptSpec, max_request_bytes: int, model: str | None) -> tuple[int, int]:
    """(bytes left for images in a request, bytes each image costs besides its base64).

    Measured on the real encoder: the body with no image, and the cost of one empty image
    part of the longest MIME type we send.
    """
    empty = len(encode(chat_body(spec, [], model)))
    one = len(encode(chat_body(spec, [("image/jpeg", b"")], model)))
    return max_request_bytes - empty, one - empty


def split(
    sizes: list[int], max_images: int, room: int, per_image: int
) -> list[list[int]]:
    """Indexes of consecutive images, in order, cut into requests of at most `max_images`
    images whose encoded size fits `room`. An image too large for any request still gets a
    request of its own: the caller refused such images before (the prepare budget)."""
    parts: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, size in enumerate(sizes):
        cost = base64_length(size) + per_image
        if current and (len(current) == max_images or used + cost > room):
            parts.append(current)
            current, used = [], 0
        current.append(index)
        used += cost
    if current:
        parts.append(current)
    return parts


def packed_spec(spec: PromptSpec, count: int) -> PromptSpec:
    """The prompt and response schema of a request packing `count` independent images.

    The answer is a list of {index, caption} (or {index, answer} with the user's own schema),
    so each answer is matched to its image by number, never by position.
    """
    if spec.response_schema is None:
        item = {"index": {"type": "integer"}, "caption": {"type": "string"}}
        shape = '{"index": <image number>, "caption": <your answer>}'
    else:
        item = {"index": {"type": "integer"}, "answer": spec.response_schema}
        shape = '{"index": <image number>, "answer": <your answer as the schema says>}'
    schema = {
        "type": "object",
        "properties": {
            PACKED_FIELD: {
                "type": "array",
                "items": {"type": "object", "properties": item, "required": sorted(item)},
            }
        },
        "required": [PACKED_FIELD],
    }
    prompt = (
        f"{spec.prompt}\n\nYou are given {count} separate images, numbered 1 to {count} in the "
        "order they appear. Answer for each image on its own, as if it were the only one. "
        f'Reply with a JSON object {{"{PACKED_FIELD}": [...]}} holding exactly one entry '
        f"per image: {shape}."
    )
    return replace(spec, prompt=prompt, response_schema=schema, caption_field=PACKED_FIELD)


@dataclass(frozen=True)
class PackedAnswer:
    """A packed response: one answer per image index when it maps one-to-one, else None."""

    answers: tuple[Answer, ...] | None
    usage: Usage
    problem: str | None = None  # why it does not map, in one sentence


def parse_packed(raw: bytes, count: int, spec: PromptSpec) -> PackedAnswer:
    """Match a packed response to its `count` images by index.

    BadResponse (retried as any bad answer) when the body is not a usable JSON answer at all;
    a PackedAnswer without answers when it is, but does not map one-to-one (a missing,
    repeated or extra index, or an entry without a usable caption): those images are asked
    again one by one.
    """
    envelope = parse_answer(raw, PACKED_FIELD, structured=False)
    try:
        payload = json.loads(envelope.caption)
    except ValueError:
        raise BadResponse("The packed answer is not valid JSON.") from None
    entries = payload.get(PACKED_FIELD) if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise BadResponse(f"The packed answer has no list {PACKED_FIELD!r}.")
    by_index: dict[int, Answer] = {}
    for entry in entries:
        index = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= count:
            return _unmatched(envelope, f"the answer names image {index!r} of {count}")
        if index in by_index:
            return _unmatched(envelope, f"the answer names image {index} twice")
        answer = _entry_answer(entry, spec)
        if answer is None:
            return _unmatched(envelope, f"the entry for image {index} has no usable answer")
        by_index[index] = answer
    if len(by_index) != count:
        missing = sorted(set(range(1, count + 1)) - set(by_index))
        return _unmatched(envelope, f"the answer has no entry for image {missing[0]}")
    return PackedAnswer(tuple(by_index[i] for i in range(1, count + 1)), envelope.usage)


def _unmatched(envelope: Answer, problem: str) -> PackedAnswer:
    return PackedAnswer(None, envelope.usage, f"The packed answer does not map: {problem}.")


def _entry_answer(entry: dict[str, Any], spec: PromptSpec) -> Answer | None:
    no_usage = Usage(None, None, None)
    if spec.response_schema is None:
        caption = entry.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            return None
        return Answer(caption.strip(), None, no_usage)
    answer = entry.get("answer")
    if not isinstance(answer, dict) or not isinstance(answer.get(spec.caption_field), str):
        return None
    text = json.dumps(answer, ensure_ascii=False, sort_keys=True)
    return Answer(answer[spec.caption_field], text, no_usage)


def apportion(total: int, weights: list[int]) -> list[int]:
    """`total` shared out in proportion to `weights` (largest remainder), summing exactly to
    `total`. Zero weights share equally, so every image carries part of the request."""
    if not weights:
        return []
    weights = [max(0, w) for w in weights]
    if sum(weights) == 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    remainders = sorted(
        range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i)
    )
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


def apportion_usage(usage: Usage, weights: list[int]) -> list[Usage] | None:
    """One request's usage shared over its images by their estimated image tokens; None when
    the response carried no usage."""
    if not usage.reported:
        return None
    assert usage.prompt_tokens is not None and usage.completion_tokens is not None
    total = usage.total_tokens
    if total is None:
        total = usage.prompt_tokens + usage.completion_tokens
    prompt = apportion(usage.prompt_tokens, weights)
    completion = apportion(usage.completion_tokens, weights)
    totals = apportion(total, weights)
    return [Usage(p, c, t) for p, c, t in zip(prompt, completion, totals, strict=True)]
