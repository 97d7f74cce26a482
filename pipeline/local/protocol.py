"""What a request to the local endpoint is, and what an answer is: the Databricks serving
protocol as the local endpoint checks it.

A chat request is validated here against a model family's limits exactly (a valid run must
never see a 400), its images decoded and measured by the reference model
(pipeline.local.describer), and its answer body built with usage counted the way the
pipeline's estimates are. Pure functions, no sockets: the server (pipeline.local.server) reads
the bytes and sends what these return.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from pipeline.endpoint.payloads import text_tokens
from pipeline.images.limits import ModelFamily
from pipeline.local import describer

# Declared data-URL types and the Pillow format each promises.
MIME_FORMATS = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",  # not registered, but common; it promises the same bytes
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}

# {"type": "json_object"} asks for any JSON object: answer with the caption and its facts.
_JSON_OBJECT_SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
    },
}

# The routes of the serving protocol.
INVOCATIONS = re.compile(r"/serving-endpoints/([^/]+)/invocations")
CHAT_COMPLETIONS = "/serving-endpoints/chat/completions"
ENDPOINT_INFO = re.compile(r"/api/2\.0/serving-endpoints/([^/]+)")
WELL_KNOWN = "/.well-known/databricks-config"


class BadRequest(ValueError):
    """The request breaks the protocol or the family's limits: a 400 BAD_REQUEST."""


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request: its text, images (measured) and answer options."""

    prompt_text: str
    images: tuple[bytes, ...]
    measured: tuple[describer.Measurements, ...]
    max_tokens: int | None
    response_schema: dict[str, Any] | None


@dataclass(frozen=True)
class Reply:
    """What the handler does with a request; stats are recorded from it before it is sent."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    action: str = "send"  # send | drop (half the body, then close) | hang (close, no answer)
    fault: str | None = None
    image_digests: tuple[str, ...] = ()  # set on 200 JSON answers only
    # An answer that is no caption (pipeline.local.bad_answers): cut_off, refusal or
    # schema_break; still a 200 answer, counted apart.
    bad_answer: str | None = None

    @property
    def answered_ok(self) -> bool:
        return self.status == 200 and self.action == "send" and self.fault is None


def parse_chat(payload: dict[str, Any], family: ModelFamily) -> ChatRequest:
    """Validate a chat-completions body against `family`; BadRequest says what is wrong."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("The request has no messages.")
    if payload.get("stream"):
        raise BadRequest("Streaming is not supported by the local endpoint.")
    texts: list[str] = []
    urls: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("Each message must be an object.")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url":
                    url = part.get("image_url")
                    urls.append(url.get("url") if isinstance(url, dict) else url)
                else:
                    raise BadRequest(f"Unsupported message content part: {str(kind)[:40]}.")
        elif content is not None:
            raise BadRequest("Message content must be a string or a list of parts.")
    if len(urls) > family.max_images_per_request:
        raise BadRequest(
            f"The request has {len(urls)} images; at most {family.max_images_per_request} "
            "are allowed."
        )
    images = tuple(decode_image(url, i, family) for i, url in enumerate(urls, 1))
    measured = tuple(_measure(data, i) for i, data in enumerate(images, 1))
    return ChatRequest(
        prompt_text="".join(texts),
        images=images,
        measured=measured,
        max_tokens=_max_tokens(payload),
        response_schema=_response_schema(payload.get("response_format")),
    )


def decode_image(url: Any, index: int, family: ModelFamily) -> bytes:
    """The bytes of image `index` (1-based), checked against everything the family limits."""
    where = f"Image {index}"
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise BadRequest(f"{where} is not a base64 data URL.")
    header, data = url[5:].split(",", 1)
    mime, *params = (p.strip().lower() for p in header.split(";"))
    if "base64" not in params:
        raise BadRequest(f"{where} is not a base64 data URL.")
    declared = MIME_FORMATS.get(mime)
    if declared not in family.formats:
        raise BadRequest(
            f"{where} is {mime or 'untyped'}; this endpoint accepts {', '.join(family.formats)}."
        )
    try:
        # Whitespace is tolerated (MIME-style line breaks); any other stray byte is not.
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64.") from None
    if len(raw) > family.max_image_bytes:
        raise BadRequest(
            f"{where} is {len(raw):,} bytes; at most {family.max_image_bytes:,} are allowed."
        )
    try:
        with Image.open(io.BytesIO(raw)) as img:
            actual, size = img.format, img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        raise BadRequest(f"{where} cannot be decoded as an image.") from None
    actual = "JPEG" if actual == "MPO" else actual  # a camera's MPO is a JPEG with extras
    if actual != declared:
        raise BadRequest(f"{where} is declared {mime} but its bytes are {actual}.")
    if max(size) > family.max_side:
        raise BadRequest(
            f"{where} is {size[0]}x{size[1]}; the longest side may be at most {family.max_side}."
        )
    return raw


def input_tokens(request: ChatRequest, family: ModelFamily) -> int:
    """The request's prompt tokens, counted the way the pipeline's estimates are."""
    image_tokens = sum(family.image_tokens(m.width, m.height) for m in request.measured)
    return text_tokens(request.prompt_text) + image_tokens


def completion(
    model: str, content: str, request: ChatRequest, family: ModelFamily,
    finish_reason: str = "stop", completion_tokens: int | None = None,
) -> dict[str, Any]:
    """The chat.completion body, with usage counted the way the pipeline's estimates are
    (unless `completion_tokens` says otherwise: a cut-off answer spent all it was allowed)."""
    prompt_tokens = input_tokens(request, family)
    if completion_tokens is None:
        completion_tokens = text_tokens(content)
    if request.max_tokens is not None:
        completion_tokens = min(completion_tokens, request.max_tokens)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_reply(
    status: int, code: str, message: str, *, headers: tuple[tuple[str, str], ...] = (),
    fault: str | None = None,
) -> Reply:
    body = json_bytes({"error_code": code, "message": message})
    return Reply(status, body, headers=headers, fault=fault)


def _measure(data: bytes, index: int) -> describer.Measurements:
    try:
        return describer.measure(data)
    except ValueError:  # the header parsed but the pixels do not (truncated, corrupt)
        raise BadRequest(f"Image {index} cannot be decoded as an image.") from None


def _max_tokens(payload: dict[str, Any]) -> int | None:
    value = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return _JSON_OBJECT_SCHEMA
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON Schema object.")
        return schema
    return None


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
