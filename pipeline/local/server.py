"""A real HTTP server speaking the Databricks model-serving protocol, answered by the local
reference model (pipeline.local.describer).

The pipeline, its tests and `vision-batch serve-local` run against it with no workspace. It
enforces a model family's limits exactly (a valid run must never see a 400), refuses requests
over a concurrency cap like a real endpoint, and injects faults (429, 5xx, hangs, HTML pages,
dropped connections) deterministically: the same request body gets the same fault sequence
whatever order requests arrive in, so a failure seen once can be replayed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import io
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, UnidentifiedImageError

from pipeline.endpoint.pacing import NAMES, UNITS, window_s
from pipeline.endpoint.payloads import text_tokens
from pipeline.images.limits import ModelFamily, load_catalog
from pipeline.local import describer

FAULT_KINDS = ("429", "500", "502", "503", "504", "hang", "html", "drop")
# ordered: as measured; reversed: entries in reverse order (indexes still right);
# missing: the last entry left out; extra: one entry for an image that was not sent.
PACKED_ANSWERS = ("ordered", "reversed", "missing", "extra")
RPM_WINDOW_S = 60.0

# Declared data-URL types and the Pillow format each promises.
MIME_FORMATS = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",  # not registered, but common; it promises the same bytes
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}

# Bodies longer than this are not even drained: the connection is closed after the 400.
_DRAIN_LIMIT = 256 * 1024 * 1024

_SERVER_ERRORS = {
    "500": ("INTERNAL_ERROR", "The model server failed while handling the request."),
    "502": ("TEMPORARILY_UNAVAILABLE", "Bad gateway: the model server did not answer."),
    "503": ("TEMPORARILY_UNAVAILABLE", "The endpoint is temporarily unavailable."),
    "504": ("TEMPORARILY_UNAVAILABLE", "Gateway timeout: the model server took too long."),
}

_PROXY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body>"
    b"<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)

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

_INVOCATIONS = re.compile(r"/serving-endpoints/([^/]+)/invocations")
_CHAT_COMPLETIONS = "/serving-endpoints/chat/completions"
_ENDPOINT_INFO = re.compile(r"/api/2\.0/serving-endpoints/([^/]+)")
_WELL_KNOWN = "/.well-known/databricks-config"
_STATS = "/local/stats"


@dataclass
class Faults:
    """Deterministic fault injection; rates are probabilities in [0, 1] summing to <= 1."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_504: float = 0.0
    rate_hang: float = 0.0  # accept the request, then never answer (until hang_s or stop())
    hang_s: float = 600.0
    rate_html: float = 0.0  # HTTP 200 with a text/html body (a proxy's error page), not JSON
    rate_drop: float = 0.0  # full Content-Length, half the body, then the socket closes
    retry_after: str | None = None  # Retry-After on every 429 ("1" or an HTTP date)
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            rate = self.rate(kind)
            if not 0.0 <= rate <= 1.0:  # also false for NaN
                raise ValueError(f"--rate-{kind} must be between 0 and 1, not {rate}")
        total = sum(self.rate(kind) for kind in FAULT_KINDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"the --rate-* flags sum to {total:g}; they must sum to at most 1")
        if not self.hang_s >= 0:
            raise ValueError(f"--hang-s must be zero or more, not {self.hang_s}")

    def rate(self, kind: str) -> float:
        return float(getattr(self, f"rate_{kind}"))

    @property
    def active(self) -> bool:
        return any(self.rate(kind) > 0 for kind in FAULT_KINDS)


@dataclass
class EndpointOptions:
    token: str  # bearer token clients must send
    family: ModelFamily | None = None  # limits to enforce; None: the generic family
    endpoint_name: str | None = None  # other names get 404; None accepts any name
    # Service time of every answered request: from reading it to answering, our own decoding
    # and describing included, so a benchmark's bound (capacity / latency) is the real one.
    latency_ms: float = 0.0
    max_concurrency: int | None = None  # requests in flight above this get 429 at once
    # Requests admitted in any 60 s window above this get 429 with a Retry-After, like a
    # pay-per-token endpoint's queries-per-time limit.
    max_rpm: int | None = None
    # A pay-per-token endpoint's limits: input tokens per minute (counted when a request is
    # admitted), output tokens per minute (counted when answered; a request is refused while
    # the minute's output is spent) and queries per hour. Past one: 429 with a Retry-After.
    max_itpm: int | None = None
    max_otpm: int | None = None
    max_qph: int | None = None
    # How answers to packed requests (a list of entries with an `index`) come back: as
    # measured, or misbehaving the way models do, so the pipeline's matching can be tested.
    packed_answers: str = "ordered"
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the endpoint needs a non-empty token")
        if not self.latency_ms >= 0:
            raise ValueError(f"--latency-ms must be zero or more, not {self.latency_ms}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be at least 1, not {self.max_concurrency}")
        for name in ("rpm", *NAMES):
            value = getattr(self, f"max_{name}")
            if value is not None and value < 1:
                raise ValueError(f"--max-{name} must be at least 1, not {value}")
        if self.packed_answers not in PACKED_ANSWERS:
            raise ValueError(
                f"--packed-answers must be one of {', '.join(PACKED_ANSWERS)}, "
                f"not {self.packed_answers!r}"
            )


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

    @property
    def answered_ok(self) -> bool:
        return self.status == 200 and self.action == "send" and self.fault is None


# ---------------------------------------------------------------------------------------------
# Pure functions: request validation, fault choice, answer bodies.


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


def pick_fault(faults: Faults, key: str, n: int) -> str | None:
    """The fault for the `n`-th sighting of body digest `key`: a function of (seed, key, n)
    only, so concurrency and request order cannot change it."""
    digest = hashlib.sha256(f"{faults.seed}:{key}:{n}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += faults.rate(kind)
        if u < edge:
            return kind
    return None


def input_tokens(request: ChatRequest, family: ModelFamily) -> int:
    """The request's prompt tokens, counted the way the pipeline's estimates are."""
    image_tokens = sum(family.image_tokens(m.width, m.height) for m in request.measured)
    return text_tokens(request.prompt_text) + image_tokens


def completion(
    model: str, content: str, request: ChatRequest, family: ModelFamily
) -> dict[str, Any]:
    """The chat.completion body, with usage counted the way the pipeline's estimates are."""
    prompt_tokens = input_tokens(request, family)
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
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def misanswer(content: str, how: str) -> str:
    """A packed answer (the first list of objects with an `index`) rearranged as `how` says;
    any other content is returned as it is."""
    if how == "ordered":
        return content
    try:
        payload = json.loads(content)
    except ValueError:
        return content
    if not isinstance(payload, dict):
        return content
    for key, value in payload.items():
        if isinstance(value, list) and value and all(
            isinstance(v, dict) and "index" in v for v in value
        ):
            if how == "reversed":
                payload[key] = value[::-1]
            elif how == "missing":
                payload[key] = value[:-1]
            elif how == "extra":
                payload[key] = [*value, {**value[-1], "index": len(value) + 1}]
            return json.dumps(payload, ensure_ascii=False)
    return content


def error_reply(
    status: int, code: str, message: str, *, headers: tuple[tuple[str, str], ...] = (),
    fault: str | None = None,
) -> Reply:
    body = _json_bytes({"error_code": code, "message": message})
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


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _fresh_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "answered_ok": 0,
        "by_status": {},
        "faults": dict.fromkeys(FAULT_KINDS, 0),
        "rejected_400": 0,
        "over_rpm": 0,  # 429s from the per-minute cap
        # 429s from the token and query limits, by the limit that refused
        "over_itpm": 0, "over_otpm": 0, "over_qph": 0,
        "unauthorized": 0,
        "max_in_flight": 0,
        "in_flight": 0,
        "images": 0,
        # Wall-clock window of the traffic, so benchmarks can measure throughput as the
        # endpoint saw it: answered_ok / (last_answer_at - first_request_at).
        "first_request_at": None,
        "last_answer_at": None,
        # Time with nothing in flight between two requests: what a client left unused. The
        # gaps of a second or more are counted too (a batch boundary, say).
        "idle_s": 0.0,
        "idle_gaps_over_1s": 0,
        "idle_since": None,
    }


# ---------------------------------------------------------------------------------------------
# The server.


class _ClientGone(Exception):
    """The client closed the connection before sending the whole body."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging client must never keep the process alive
    # socketserver's default backlog of 5 drops the SYNs of a burst of new connections; the
    # clients then retry after a full second, which looks like a slow endpoint.
    request_queue_size = 256
    endpoint: LocalEndpoint

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer is normal here (drop and hang faults, timeouts).
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the pooled clients expect
    server_version = "vision-batch-local/0.1"
    sys_version = ""
    timeout = 300  # an idle keep-alive connection is closed after this many seconds
    # Headers and body go out in two writes; with Nagle's algorithm the body would wait for
    # the client's delayed ACK (~40 ms on Linux) on every answer.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request lines are noise, and nothing about a request may be logged."""

    def setup(self) -> None:
        super().setup()
        self.server.endpoint._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.endpoint._untrack(self.connection)

    def do_GET(self) -> None:
        ep = self.server.endpoint
        path = urlsplit(self.path).path
        if path == _WELL_KNOWN:
            # The databricks-sdk probes this when it builds a Config; an empty object makes it
            # fall back to the host and token it was given.
            self._send(Reply(200, b"{}"))
            return
        if not self._authorized():
            self._send(ep._unauthorized())
            return
        info = _ENDPOINT_INFO.fullmatch(path)
        if path == _STATS:
            self._send(Reply(200, _json_bytes(ep.stats())))
        elif info:
            self._send(ep._endpoint_info(unquote(info.group(1))))
        else:
            self._send(_not_found("GET", path))

    def do_POST(self) -> None:
        ep = self.server.endpoint
        path = urlsplit(self.path).path
        invocations = _INVOCATIONS.fullmatch(path)
        try:
            body, length = self._read_body(ep.family.max_request_bytes)
        except _ClientGone:
            self.close_connection = True
            return
        if not invocations and path != _CHAT_COMPLETIONS:
            self._send(_not_found("POST", path) if self._authorized() else ep._unauthorized())
            return
        ep._count_request()
        if not self._authorized():
            self._send(ep._unauthorized(chat=True))
            return
        wait_s = ep._rpm_wait()
        if wait_s is not None:
            self._send(ep._over_rpm(wait_s))
            return
        if not ep._admit():
            self._send(ep._over_capacity())
            return
        reply = None
        try:
            name = unquote(invocations.group(1)) if invocations else None
            reply = ep._decide(name, body, length)
        except Exception:  # a bug here must not leave the client waiting: answer 500
            traceback.print_exc()
            reply = error_reply(500, "INTERNAL_ERROR", "The local endpoint failed unexpectedly.")
        finally:
            # Out of flight and counted BEFORE any byte is written: a client that sends its
            # next request the moment it reads this answer must not meet a stale count.
            ep._release(reply)
        self._send(reply)

    def do_PUT(self) -> None:
        self._other_method()

    do_DELETE = do_PATCH = do_PUT

    def _other_method(self) -> None:
        try:
            self._read_body(self.server.endpoint.family.max_request_bytes)
        except _ClientGone:
            self.close_connection = True
            return
        reply = _not_found(self.command, urlsplit(self.path).path)
        self._send(reply if self._authorized() else self.server.endpoint._unauthorized())

    def _authorized(self) -> bool:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        given = value.strip().encode("utf-8", "surrogateescape")
        expected = self.server.endpoint.options.token.encode("utf-8", "surrogateescape")
        # Constant-time comparison: the token is a secret even on a test server.
        return scheme.lower() == "bearer" and hmac.compare_digest(given, expected)

    def _read_body(self, keep_limit: int) -> tuple[bytes | None, int]:
        """(body, declared length). Bodies over `keep_limit` are drained, not kept (None), so
        the client can still read the 400 that follows."""
        declared = self.headers.get("Content-Length")
        if declared is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # chunked bodies are not supported: end unknown
            return b"", 0
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return b"", 0
        if length <= keep_limit:
            body = self.rfile.read(length)
            if len(body) < length:
                raise _ClientGone
            return body, length
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return None, length
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                raise _ClientGone
            remaining -= len(chunk)
        return None, length

    def _send(self, reply: Reply) -> None:
        if reply.action == "hang":
            self._hang_up()
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            if reply.action == "drop":
                self.wfile.write(reply.body[: len(reply.body) // 2])
                self._hang_up()
            else:
                self.wfile.write(reply.body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _not_found(method: str, path: str) -> Reply:
    return error_reply(404, "NOT_FOUND", f"No route for {method} {path[:200]}.")


class LocalEndpoint:
    """The server, bound to 127.0.0.1 at construction; `start()` serves in a daemon thread."""

    def __init__(self, options: EndpointOptions, port: int = 0) -> None:
        self.options = options
        self.family = options.family or load_catalog().families["generic"]
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # wakes latency sleeps and hanging requests
        self._stopped = False
        self._stats = _fresh_stats()
        self._digests: set[str] = set()
        self._seen: dict[str, int] = {}  # body digest -> sightings, for fault injection
        self._admitted_at: deque[float] = deque()  # start times inside the rpm window
        # What the token and query limits counted, over each one's window.
        self._tallies = {name: _Tally(window_s(name)) for name in NAMES}
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._thread: threading.Thread | None = None
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.endpoint = self

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalEndpoint:
        if self._stopped:
            raise RuntimeError("this LocalEndpoint was stopped; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"local-endpoint-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            connections = list(self._connections.items())
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2.0)
        self._server.server_close()
        # Idle keep-alive connections block in a read: shutting the socket ends them.
        for sock, _ in connections:
            _shutdown(sock)
        deadline = time.monotonic() + 1.5
        for _, thread in connections:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Counters since start or reset_stats(). `requests` and `by_status` count POSTs to
        the chat routes; a dropped or hung request has no status (see `faults`);
        `unauthorized` counts 401s on every route."""
        with self._lock:
            snapshot = json.loads(json.dumps(self._stats))
            snapshot["image_digests_answered"] = len(self._digests)
        return snapshot

    def reset_stats(self) -> None:
        """Zero the counters. Requests in flight stay counted; the fault sequence per body is
        behaviour, not a statistic, so it carries on."""
        with self._lock:
            in_flight = self._stats["in_flight"]
            self._stats = _fresh_stats()
            self._stats["in_flight"] = self._stats["max_in_flight"] = in_flight
            self._digests.clear()

    # -- used by the handler ---------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections[sock] = threading.current_thread()
            stopped = self._stopped
        if stopped:  # accepted just as stop() ran: do not leave it waiting for a request
            _shutdown(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.pop(sock, None)

    def _count_request(self) -> None:
        with self._lock:
            self._stats["requests"] += 1
            if self._stats["first_request_at"] is None:
                self._stats["first_request_at"] = time.time()

    def _unauthorized(self, chat: bool = False) -> Reply:
        reply = error_reply(401, "UNAUTHENTICATED", "Missing or invalid bearer token.")
        with self._lock:
            self._stats["unauthorized"] += 1
            if chat:
                self._count_status(reply)
        return reply

    def _rpm_wait(self) -> float | None:
        """Seconds until the per-minute cap admits another request; None when it does now,
        and then the request is counted in the window."""
        cap = self.options.max_rpm
        if cap is None:
            return None
        with self._lock:
            now = time.monotonic()
            while self._admitted_at and now - self._admitted_at[0] >= RPM_WINDOW_S:
                self._admitted_at.popleft()
            if len(self._admitted_at) >= cap:
                return RPM_WINDOW_S - (now - self._admitted_at[0])
            self._admitted_at.append(now)
            return None

    def _over_rpm(self, wait_s: float) -> Reply:
        reply = error_reply(
            429,
            "REQUEST_LIMIT_EXCEEDED",
            f"The endpoint's limit of {self.options.max_rpm} requests per minute is exceeded.",
            headers=(("Retry-After", str(max(1, math.ceil(wait_s)))),),
        )
        with self._lock:
            self._count_status(reply)
            self._stats["over_rpm"] += 1
        return reply

    def _admit_tokens(self, request: ChatRequest) -> Reply | None:
        """None when the token and query limits admit the request (it is then counted), else
        the refusal: a 400 for a request larger than a whole minute, or a 429."""
        o = self.options
        tokens = input_tokens(request, self.family)
        if o.max_itpm is not None and tokens > o.max_itpm:
            return error_reply(
                400, "BAD_REQUEST",
                f"The request has {tokens:,} input tokens; the endpoint's limit is "
                f"{o.max_itpm:,} input tokens per minute.")
        needs = {"itpm": (o.max_itpm, tokens), "otpm": (o.max_otpm, 1), "qph": (o.max_qph, 1)}
        with self._lock:
            now = time.monotonic()
            waits = {name: self._tallies[name].wait(need, limit, now)
                     for name, (limit, need) in needs.items() if limit is not None}
            refused = max(waits, key=waits.get, default=None)
            if refused is None or waits[refused] == 0.0:
                self._tallies["itpm"].add(tokens, now)
                self._tallies["qph"].add(1, now)
                return None
            self._stats[f"over_{refused}"] += 1
        return error_reply(
            429, "REQUEST_LIMIT_EXCEEDED",
            f"The endpoint's limit of {needs[refused][0]:,} {UNITS[refused]} is exceeded.",
            headers=(("Retry-After", str(max(1, math.ceil(waits[refused])))),))

    def _count_output(self, tokens: int) -> None:
        with self._lock:
            self._tallies["otpm"].add(tokens, time.monotonic())

    def _admit(self) -> bool:
        with self._lock:
            limit = self.options.max_concurrency
            if limit is not None and self._stats["in_flight"] >= limit:
                return False
            if self._stats["in_flight"] == 0 and self._stats["idle_since"] is not None:
                gap = time.time() - self._stats["idle_since"]
                self._stats["idle_s"] += gap
                self._stats["idle_gaps_over_1s"] += gap >= 1.0
            self._stats["in_flight"] += 1
            self._stats["max_in_flight"] = max(
                self._stats["max_in_flight"], self._stats["in_flight"]
            )
            return True

    def _over_capacity(self) -> Reply:
        reply = error_reply(
            429,
            "REQUEST_LIMIT_EXCEEDED",
            f"Too many concurrent requests (at most {self.options.max_concurrency}).",
            headers=self._retry_after(),
        )
        with self._lock:
            self._count_status(reply)
        return reply

    def _release(self, reply: Reply | None) -> None:
        with self._lock:
            self._stats["in_flight"] -= 1
            if self._stats["in_flight"] == 0:
                self._stats["idle_since"] = time.time()
            if reply is None:
                return
            self._count_status(reply)
            if reply.fault:
                self._stats["faults"][reply.fault] += 1
            if reply.status == 400:
                self._stats["rejected_400"] += 1
            if reply.answered_ok:
                self._stats["last_answer_at"] = time.time()
                self._stats["answered_ok"] += 1
                self._stats["images"] += len(reply.image_digests)
                self._digests.update(reply.image_digests)

    def _count_status(self, reply: Reply) -> None:
        if reply.action == "send":  # a dropped or hung request never got a whole answer
            by_status = self._stats["by_status"]
            by_status[str(reply.status)] = by_status.get(str(reply.status), 0) + 1

    def _endpoint_info(self, name: str) -> Reply:
        if self.options.endpoint_name and name != self.options.endpoint_name:
            return error_reply(404, "ENDPOINT_NOT_FOUND", f"Endpoint {name[:200]!r} not found.")
        body = {
            "name": name,
            "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
            "task": "llm/v1/chat",
        }
        return Reply(200, _json_bytes(body))

    def _retry_after(self) -> tuple[tuple[str, str], ...]:
        value = self.options.faults.retry_after
        return (("Retry-After", value),) if value else ()

    def _decide(self, path_name: str | None, body: bytes | None, length: int) -> Reply:
        """The answer to an admitted chat request: validation, then faults, then the model."""
        started = time.monotonic()
        family = self.family
        if body is None or length > family.max_request_bytes:
            return error_reply(
                400,
                "BAD_REQUEST",
                f"The request is {length:,} bytes; at most {family.max_request_bytes:,} "
                "are allowed.",
            )
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error_reply(400, "BAD_REQUEST", "The request body is not JSON.")
        if not isinstance(payload, dict):
            return error_reply(400, "BAD_REQUEST", "The request body must be a JSON object.")
        name = path_name or payload.get("model")
        if not isinstance(name, str) or not name:
            return error_reply(400, "BAD_REQUEST", "The request names no model (endpoint).")
        if self.options.endpoint_name and name != self.options.endpoint_name:
            return error_reply(404, "ENDPOINT_NOT_FOUND", f"Endpoint {name[:200]!r} not found.")
        try:
            request = parse_chat(payload, family)
        except BadRequest as exc:
            return error_reply(400, "BAD_REQUEST", str(exc))
        refused = self._admit_tokens(request)
        if refused is not None:
            return refused
        fault = self._fault_for(body)
        faults = self.options.faults
        if fault == "429":
            return error_reply(
                429,
                "REQUEST_LIMIT_EXCEEDED",
                "The endpoint's rate limit is exceeded.",
                headers=self._retry_after(),
                fault=fault,
            )
        if fault == "hang":
            self._stopping.wait(faults.hang_s)
            return Reply(0, action="hang", fault=fault)
        answer = b""
        if fault not in _SERVER_ERRORS and fault != "html":
            content = describer.describe(list(request.measured), request.response_schema,
                                         request.prompt_text)
            content = misanswer(content, self.options.packed_answers)
            body_out = completion(name, content, request, family)
            self._count_output(body_out["usage"]["completion_tokens"])
            answer = _json_bytes(body_out)
        remaining = self.options.latency_ms / 1000 - (time.monotonic() - started)
        if remaining > 0:
            self._stopping.wait(remaining)
        if fault in _SERVER_ERRORS:
            code, message = _SERVER_ERRORS[fault]
            return error_reply(int(fault), code, message, fault=fault)
        if fault == "html":
            return Reply(200, _PROXY_PAGE, content_type="text/html; charset=utf-8", fault=fault)
        if fault == "drop":
            return Reply(200, answer, action="drop", fault=fault)
        return Reply(
            200,
            answer,
            headers=(("served-model-name", name),),
            image_digests=tuple(hashlib.sha256(data).hexdigest() for data in request.images),
        )

    def _fault_for(self, body: bytes) -> str | None:
        faults = self.options.faults
        if not faults.active:
            return None  # nothing to remember: no memory grows on a fault-free server
        key = hashlib.sha256(body).hexdigest()
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
        return pick_fault(faults, key, n)


class _Tally:
    """Amounts counted at given times, summed over the last `seconds` (a sliding window)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.total = 0
        self._log: deque[tuple[float, int]] = deque()

    def add(self, amount: int, now: float) -> None:
        self._log.append((now, amount))
        self.total += amount

    def wait(self, need: int, limit: int, now: float) -> float:
        """0.0 when `need` more fits under `limit` now, else the seconds until it does."""
        while self._log and self._log[0][0] + self.seconds <= now:
            self.total -= self._log.popleft()[1]
        excess = self.total + need - limit
        if excess <= 0:
            return 0.0
        for at, amount in self._log:
            excess -= amount
            if excess <= 0:
                return at + self.seconds - now
        return self.seconds


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# `vision-batch serve-local`.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    parser.add_argument(
        "--max-concurrency", type=int, default=None,
        help="requests in flight above this get 429 REQUEST_LIMIT_EXCEEDED",
    )
    parser.add_argument(
        "--max-rpm", type=int, default=None,
        help="requests per 60 s window above this get 429 with Retry-After",
    )
    for name in NAMES:
        parser.add_argument(
            f"--max-{name}", type=int, default=None,
            help=f"{UNITS[name]} above this get 429 with Retry-After (a pay-per-token limit)",
        )
    parser.add_argument(
        "--packed-answers", choices=PACKED_ANSWERS, default="ordered",
        help="how answers to packed requests come back (to test matching by index)",
    )
    parser.add_argument("--endpoint", default=None, help="endpoint name to serve (default: any)")
    parser.add_argument(
        "--family", default="generic", help="model family from models.yml whose limits apply"
    )
    for kind in FAULT_KINDS:
        parser.add_argument(
            f"--rate-{kind}", type=float, default=0.0,
            help=f"share of requests answered with fault {kind} (0-1)",
        )
    parser.add_argument("--hang-s", type=float, default=600.0, help="how long a hang lasts")
    parser.add_argument("--retry-after", default=None, help="Retry-After value on every 429")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault sequence")


def options_from_args(args: argparse.Namespace, token: str) -> EndpointOptions:
    """EndpointOptions from parsed flags; ValueError (naming the flag) for a bad value."""
    faults = Faults(
        **{f"rate_{kind}": getattr(args, f"rate_{kind}") for kind in FAULT_KINDS},
        hang_s=args.hang_s,
        retry_after=args.retry_after,
        seed=args.seed,
    )
    return EndpointOptions(
        token=token,
        family=load_catalog().family("", explicit=args.family),
        endpoint_name=args.endpoint,
        latency_ms=args.latency_ms,
        max_concurrency=args.max_concurrency,
        max_rpm=args.max_rpm,
        max_itpm=args.max_itpm,
        max_otpm=args.max_otpm,
        max_qph=args.max_qph,
        packed_answers=args.packed_answers,
        faults=faults,
    )


def serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM. The token comes from DATABRICKS_TOKEN, never a flag,
    so it stays out of shell history and process listings."""
    token = os.environ.get("DATABRICKS_TOKEN")
    if not token:
        print("Set DATABRICKS_TOKEN to the token clients must send.", file=sys.stderr)
        return 2
    options = options_from_args(args, token)
    try:
        endpoint = LocalEndpoint(options, port=args.port)
    except OSError as exc:
        print(f"Cannot listen on 127.0.0.1:{args.port}: {exc.strerror}.", file=sys.stderr)
        return 1
    stopping = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    # Signal handlers can only be installed from the main thread (not so under a test runner).
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set()) if on_main else None
    try:
        with endpoint:
            served = options.endpoint_name or "any endpoint name"
            print(
                f"Serving the local reference model at {endpoint.url} ({served}, family "
                f"{endpoint.family.name}); Ctrl-C stops it.",
                flush=True,
            )
            while not stopping.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0
