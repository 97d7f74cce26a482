"""Chat-completions request bodies and answers: pure functions, no I/O.

The body is the OpenAI chat-completions shape that Databricks serving endpoints, vLLM and
Ollama all accept; images travel as base64 data URLs.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

from pipeline.endpoint import prompt_ids
from pipeline.endpoint.schemas import answer_problem


class BadResponse(ValueError):
    """The endpoint answered 2xx with a body we cannot use (not JSON, no text, bad schema)."""


class SchemaMismatch(BadResponse):
    """A structured answer that is JSON but breaks the run's response schema: asked again
    as any unusable answer is, and its own error class when it keeps breaking it."""


# The finish reasons that make an answer unusable, however it reads: the text stopped at
# max_tokens (every chat-completions server says "length"), or the model or its guard
# refused. The row fails with the class named here (pipeline/endpoint/asking.py).
CUT_OFF = "length"
REFUSED = ("content_filter",)


@dataclass(frozen=True)
class PromptSpec:
    """Everything that shapes the answer; its hash is the row's prompt_id."""

    prompt: str
    max_tokens: int
    temperature: float | None = None
    response_schema: dict[str, Any] | None = None
    caption_field: str = "caption"
    group_by: str | None = None  # set when the prompt is asked of groups of images

    @property
    def response_format(self) -> dict[str, Any] | None:
        """The chat-completions `response_format` that asks for answers fitting the schema
        (ai_query's `responseFormat` takes the same, as JSON text); None: plain text."""
        if self.response_schema is None:
            return None
        return {"type": "json_schema",
                "json_schema": {"name": "answer", "schema": self.response_schema, "strict": True}}

    @property
    def prompt_id(self) -> str:
        """The same id the SQL templates compute from the same values (prompt_ids.py)."""
        return prompt_ids.prompt_id(self.prompt, self.max_tokens, self.temperature,
                                    self.response_format, self.caption_field, self.group_by)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None

    @property
    def reported(self) -> bool:
        """Whether the answer said what it cost, in and out (a total alone is not enough)."""
        return self.prompt_tokens is not None and self.completion_tokens is not None


@dataclass(frozen=True)
class Answer:
    caption: str
    response_json: str | None
    usage: Usage
    # choices[0].finish_reason as the endpoint said it ("stop", "length", ...); None if not.
    finish_reason: str | None = None

    @property
    def cut_off(self) -> bool:
        return self.finish_reason == CUT_OFF

    @property
    def refused(self) -> bool:
        return self.finish_reason in REFUSED


def text_tokens(text: str) -> int:
    """Tokens of prompt or answer text, estimated at 4 characters a token: what a request is
    paced by before it is sent, and what a row records when the endpoint gives no usage."""
    return math.ceil(len(text) / 4)


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def chat_body(
    spec: PromptSpec,
    images: list[tuple[str, bytes]],
    model: str | None = None,
) -> dict[str, Any]:
    """The request body for one prompt over `images` (mime, bytes) in order."""
    content: list[dict[str, Any]] = [{"type": "text", "text": spec.prompt}]
    content += [{"type": "image_url", "image_url": {"url": data_url(m, d)}} for m, d in images]
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": spec.max_tokens,
    }
    if model:
        body["model"] = model
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    if spec.response_format is not None:
        body["response_format"] = spec.response_format
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def base64_length(n: int) -> int:
    return 4 * ((n + 2) // 3)


def image_byte_budget(
    spec: PromptSpec, max_request_bytes: int, max_image_bytes: int, model: str | None = None
) -> int:
    """Largest raw image that keeps a one-image request within `max_request_bytes`."""
    overhead = len(encode(chat_body(spec, [("image/jpeg", b"")], model)))
    room = max_request_bytes - overhead
    return max(0, min(max_image_bytes, room // 4 * 3))


def parse_answer(raw: bytes, caption_field: str, structured: bool,
                 schema: dict[str, Any] | None = None) -> Answer:
    """Caption, structured JSON, finish reason and usage from a chat-completions response
    body; a structured answer is checked against `schema` when one is given.

    An answer cut off or refused (`finish_reason`) is returned as it is, unread: its text is
    no answer (a cut-off JSON is not even JSON), and the row it makes fails with its own
    class, its usage kept, rather than being asked again as an unreadable one would be."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadResponse("The endpoint answered with a body that is not JSON.") from None
    try:
        choice = payload["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise BadResponse("The endpoint's answer has no choices[0].message.content.") from None
    if isinstance(text, list):  # some servers return content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    finish = finish if isinstance(finish, str) else None
    usage = _usage(payload)
    if finish == CUT_OFF or finish in REFUSED:
        return Answer(text.strip() if isinstance(text, str) else "", None, usage, finish)
    if not isinstance(text, str) or not text.strip():
        raise BadResponse("The endpoint's answer is empty.")
    response_json = None
    caption = text.strip()
    if structured:
        caption, response_json = structured_text(text, schema, caption_field)
    return Answer(caption=caption, response_json=response_json, usage=usage,
                  finish_reason=finish)


def structured_text(text: str, schema: dict[str, Any] | None,
                    caption_field: str) -> tuple[str, str]:
    """(caption, canonical JSON) of a structured answer's text: BadResponse when it is no
    JSON, SchemaMismatch when it breaks `schema`. The one check of a structured answer, for
    answers read here and for those `ai_query` stored (pipeline/runs/sql.py)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        raise BadResponse("The structured answer is not valid JSON.") from None
    return structured_answer(parsed, schema, caption_field)


def structured_answer(parsed: Any, schema: dict[str, Any] | None,
                      caption_field: str) -> tuple[str, str]:
    """(caption, canonical JSON) of a parsed structured answer (one image's, or one entry of
    a packed answer): checked against the whole `schema` first, then for its caption field."""
    if schema is not None and (problem := answer_problem(parsed, schema)):
        raise SchemaMismatch(f"The answer breaks the response schema at {problem}")
    if not isinstance(parsed, dict) or not isinstance(parsed.get(caption_field), str):
        raise BadResponse(f"The structured answer has no string field {caption_field!r}.")
    return parsed[caption_field], json.dumps(parsed, ensure_ascii=False, sort_keys=True)


def _usage(payload: Any) -> Usage:
    usage = payload.get("usage") if isinstance(payload, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return Usage(
        _int_or_none(usage.get("prompt_tokens")),
        _int_or_none(usage.get("completion_tokens")),
        _int_or_none(usage.get("total_tokens")),
    )


def caption_parser(caption_field: str, structured: bool):
    """A parser of one-image answers for `CaptionClient.call`."""
    return functools.partial(parse_answer, caption_field=caption_field, structured=structured)


def answer_parser(spec: PromptSpec):
    """The parser of answers to `spec`'s own question (one image, or a group): a structured
    answer must also fit the run's response schema."""
    return functools.partial(parse_answer, caption_field=spec.caption_field,
                             structured=spec.response_schema is not None,
                             schema=spec.response_schema)


def error_message(raw: bytes) -> str | None:
    """The `message` of a Databricks JSON error body, if there is one."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(payload, dict):
        message = payload.get("message") or (payload.get("error") or {}).get("message")
        if isinstance(message, str):
            return message
    return None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
