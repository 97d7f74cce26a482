"""Several images in one request: how they are split, asked, answered and paid for.

Pure functions. Two users: `--images-per-request K` packs K independent images into one
request whose answer holds one caption per image index, and `--group-by` sends the images of
one group together with a group prompt. Both split at the model's images-per-request and
request-byte limits (conf/models.yml), measured on the prepared images.
"""

from __future__ import annotations

import json
import re
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
    structured_answer,
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
    """A packed response, entry by entry.

    `answers` holds, per image index, its answer, or None when that image must be asked again
    alone (its entry is missing, cut off, unusable or breaks the schema); `answers` itself is
    None when no entry can be trusted (an index out of range or named twice: the model mixed
    up the images), and every image is asked again alone."""

    answers: tuple[Answer | None, ...] | None
    usage: Usage
    problem: str | None = None  # why some or all entries are not used, in one sentence

    @property
    def again(self) -> list[int]:
        """Positions (0-based) of the images to ask again alone."""
        if self.answers is None:
            return []
        return [i for i, answer in enumerate(self.answers) if answer is None]


def parse_packed(raw: bytes, count: int, spec: PromptSpec) -> PackedAnswer:
    """Match a packed response to its `count` images by index, and check each entry alone.

    BadResponse (retried as any bad answer) when the body is not a usable JSON answer at all.
    Otherwise each entry stands on its own: one that is missing, has no usable caption or
    breaks the response schema leaves its image to be asked again alone, the others are kept.
    A pack cut off at max_tokens keeps the entries written in full before the cut (their JSON
    object closed: their text ended by itself) and leaves the rest, the entry the cut fell in
    and those never begun, to be asked alone, where each has max_tokens to itself. A refused
    pack leaves every image to be asked alone: one image may be what the filter refused.
    An index out of range or named twice means the model mixed the images up: no entry is
    trusted (`answers` None)."""
    envelope = parse_answer(raw, PACKED_FIELD, structured=False)
    if envelope.refused:
        return PackedAnswer((None,) * count, envelope.usage,
                            f"The packed answer was refused ({envelope.finish_reason}).")
    if envelope.cut_off:
        entries: list[Any] = complete_entries(envelope.caption)
        finish: str | None = "stop"  # the entries kept closed before the cut
    else:
        try:
            payload = json.loads(envelope.caption)
        except ValueError:
            raise BadResponse("The packed answer is not valid JSON.") from None
        listed = payload.get(PACKED_FIELD) if isinstance(payload, dict) else None
        if not isinstance(listed, list):
            raise BadResponse(f"The packed answer has no list {PACKED_FIELD!r}.")
        entries, finish = listed, envelope.finish_reason
    by_index: dict[int, Answer | None] = {}
    problems: list[str] = []
    for entry in entries:
        index = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= count:
            return _unmatched(envelope, f"the answer names image {index!r} of {count}")
        if index in by_index:
            return _unmatched(envelope, f"the answer names image {index} twice")
        answer, problem = _entry_answer(entry, spec, finish)
        by_index[index] = answer
        if problem:
            problems.append(f"the entry for image {index} {problem}")
    missing = [i for i in range(1, count + 1) if i not in by_index]
    if missing:
        cut = " (cut off at max_tokens)" if envelope.cut_off else ""
        problems.insert(0, f"the answer has no complete entry for image {missing[0]}{cut}")
    problem = f"The packed answer: {'; '.join(problems)}." if problems else None
    return PackedAnswer(tuple(by_index.get(i) for i in range(1, count + 1)), envelope.usage,
                        problem)


# Where the list of entries begins in a packed answer's text.
_ENTRIES = re.compile(rf'"{PACKED_FIELD}"\s*:\s*\[')


def complete_entries(text: str) -> list[Any]:
    """The entries of a packed answer cut off mid-way that were written in full: each JSON
    value of the list that closed before the text ends, in order."""
    start = _ENTRIES.search(text)
    if start is None:
        return []
    decoder, at = json.JSONDecoder(), start.end()
    entries: list[Any] = []
    while True:
        at = _skip(text, at)
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:  # the entry the cut fell in (or the list's end)
            return entries
        entries.append(value)
        at = _skip(text, at)
        if not text.startswith(",", at):
            return entries
        at += 1


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _unmatched(envelope: Answer, problem: str) -> PackedAnswer:
    return PackedAnswer(None, envelope.usage, f"The packed answer does not map: {problem}.")


def _entry_answer(entry: dict[str, Any], spec: PromptSpec,
                  finish: str | None) -> tuple[Answer | None, str | None]:
    """One entry's answer (with its own finish reason), or None and what is wrong with it."""
    no_usage = Usage(None, None, None)
    if spec.response_schema is None:
        caption = entry.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            return None, "has no usable caption"
        return Answer(caption.strip(), None, no_usage, finish), None
    answer = entry.get("answer")
    try:
        caption, text = structured_answer(answer, spec.response_schema, spec.caption_field)
    except BadResponse as exc:
        return None, f"is no usable answer: {exc}"
    return Answer(caption, text, no_usage, finish), None


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
