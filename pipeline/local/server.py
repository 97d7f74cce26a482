"""A real HTTP server on 127.0.0.1 speaking the Databricks model-serving protocol, answered by
the local reference model (pipeline.local.describer).

The pipeline, its tests and `vision-batch serve-local` run against it with no workspace. It
checks each request as pipeline.local.protocol says, refuses requests over a concurrency cap
or a rate limit (pipeline.local.limits) like a real endpoint, injects the faults
pipeline.local.faults picks, accepts a static token or the OAuth M2M tokens it mints
(pipeline.local.oauth), goes down for an outage on demand (pipeline.local.outage), and counts
what it saw (pipeline.local.stats; `stats()`, GET /local/stats) so tests and benchmarks can
check it. The HTTP side (reading, routing,
writing) is pipeline.local.handler; this module holds the options and the decisions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.endpoint.pacing import NAMES
from pipeline.images.limits import ModelFamily, load_catalog
from pipeline.local import bad_answers, describer
from pipeline.local.bad_answers import BadAnswers
from pipeline.local.faults import (
    PACKED_ANSWERS,
    PROXY_PAGE,
    SERVER_ERRORS,
    Faults,
    misanswer,
    pick_fault,
)
from pipeline.local.handler import Handler, Server, shutdown
from pipeline.local.limits import Limits
from pipeline.local.oauth import OAuthClient, TokenIssuer
from pipeline.local.outage import Outage, OutageWindow
from pipeline.local.protocol import (
    BadRequest,
    ChatRequest,
    Reply,
    completion,
    error_reply,
    input_tokens,
    json_bytes,
    parse_chat,
)
from pipeline.local.stats import Counters


@dataclass
class EndpointOptions:
    # The static bearer token (a PAT) clients may send; None when only OAuth is served.
    token: str | None = field(default=None, repr=False)
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
    # Answers that are no captions though the request succeeded: cut off, refused, breaking
    # the request's schema (pipeline.local.bad_answers).
    bad_answers: BadAnswers = field(default_factory=BadAnswers)
    # OAuth M2M: the service principal whose minted access tokens are accepted as well.
    oauth: OAuthClient | None = None
    outage: Outage | None = None  # a planned outage (see pipeline.local.outage)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ValueError("the endpoint needs a non-empty token")
        if self.token is None and self.oauth is None:
            raise ValueError("the endpoint needs a token or an OAuth client")
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


class LocalEndpoint:
    """The server, bound to 127.0.0.1 at construction; `start()` serves in a daemon thread."""

    def __init__(self, options: EndpointOptions, port: int = 0) -> None:
        self.options = options
        self.family = options.family or load_catalog().families["generic"]
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # wakes latency sleeps and hanging requests
        self._stopped = False
        self._counters = Counters()
        self._issuer = TokenIssuer(options.oauth) if options.oauth else None
        self._outage = OutageWindow(options.outage)
        self._seen: dict[str, int] = {}  # body digest -> sightings, for fault injection
        self._limits = Limits(options.max_rpm, options.max_itpm, options.max_otpm,
                             options.max_qph)
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._thread: threading.Thread | None = None
        self._server = Server(("127.0.0.1", port), Handler)
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
            shutdown(sock)
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
        `unauthorized` counts 401s on every route, of which `unauthorized_expired` for an
        expired OAuth token and `invalid_client` for a wrong client at the token endpoint;
        `tokens_issued` the OAuth tokens minted; `outage_refused` the chat requests an outage
        refused, and outage_active/_kind/_started_at/_ended_at describe the last outage."""
        return {**self._counters.snapshot(), **self._outage.report()}

    def reset_stats(self) -> None:
        """Zero the counters. Requests in flight stay counted; the fault sequence per body,
        the tokens minted and the outage (its plan, its window) are behaviour, not
        statistics, so they carry on."""
        self._counters.reset()

    # -- used by the handler ---------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections[sock] = threading.current_thread()
            stopped = self._stopped
        if stopped:  # accepted just as stop() ran: do not leave it waiting for a request
            shutdown(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.pop(sock, None)

    def _auth_refusal(self, authorization: str, chat: bool) -> Reply | None:
        """None for the static token or a live minted one; else the 401, counted (`chat`:
        its status too), saying so when the token was minted here and has expired."""
        scheme, _, value = authorization.partition(" ")
        given = value.strip()
        state = "invalid"
        if scheme.lower() == "bearer":
            static = self.options.token
            # Constant-time comparison: the token is a secret even on a test server.
            if static and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                              static.encode("utf-8", "surrogateescape")):
                return None
            if self._issuer is not None:
                state = self._issuer.check(given) or "ok"
                if state == "ok":
                    return None
        if state == "expired":
            # Real Databricks answers an expired OAuth token with a 401 too; the SDK then
            # fetches a new one.
            reply = error_reply(401, "UNAUTHENTICATED", "The access token has expired.")
            names: tuple[str, ...] = ("unauthorized", "unauthorized_expired")
        else:
            reply = error_reply(401, "UNAUTHENTICATED", "Missing or invalid bearer token.")
            names = ("unauthorized",)
        if chat:
            self._counters.refused(reply, *names)
        else:
            self._counters.add(*names)
        return reply

    def _token(self, authorization: str, content_type: str, body: bytes | None) -> Reply:
        """The OAuth token endpoint's answer (an access token, or an OAuth error)."""
        assert self._issuer is not None
        answer = self._issuer.answer(authorization, content_type, body)
        if answer.status == 200:
            self._counters.add("tokens_issued")
        elif answer.status == 401:
            self._counters.add("unauthorized", "invalid_client")
        return Reply(answer.status, json_bytes(answer.body), headers=answer.headers)

    def start_outage(self, seconds: float, kind: str = "503") -> dict[str, Any]:
        """Refuse every chat request for `seconds` from now, as `kind` ("503" or "drop")
        says; replaces any open outage. The outage_* stats it starts; ValueError for a bad
        value."""
        return self._outage.start(seconds, kind)

    def _outage_request(self, body: bytes | None) -> Reply:
        """POST /local/outage with {"seconds": S, "kind": "503" | "drop"}."""
        try:
            payload = json.loads(body or b"")
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            return error_reply(400, "BAD_REQUEST", 'The body must be {"seconds": S, "kind": K}.')
        seconds: Any = payload.get("seconds")  # checked by start(), like the kind
        try:
            report = self._outage.start(seconds, payload.get("kind", "503"))
        except ValueError as exc:
            return error_reply(400, "BAD_REQUEST", str(exc))
        return Reply(200, json_bytes(report))

    def _outage_refusal(self) -> Reply | None:
        """The refusal of a chat request arriving during an outage (counted), else None."""
        kind = self._outage.refusal()
        if kind is None:
            return None
        if kind == "drop":
            reply = Reply(0, action="hang")  # closed at once, no answer: a connection error
        else:
            reply = error_reply(503, "TEMPORARILY_UNAVAILABLE", SERVER_ERRORS["503"][1])
        self._counters.refused(reply, "outage_refused")
        return reply

    def _over_capacity(self) -> Reply:
        reply = error_reply(
            429,
            "REQUEST_LIMIT_EXCEEDED",
            f"Too many concurrent requests (at most {self.options.max_concurrency}).",
            headers=self._retry_after(),
        )
        self._counters.refused(reply)
        return reply

    def _endpoint_info(self, name: str) -> Reply:
        if self.options.endpoint_name and name != self.options.endpoint_name:
            return error_reply(404, "ENDPOINT_NOT_FOUND", f"Endpoint {name[:200]!r} not found.")
        body = {
            "name": name,
            "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
            "task": "llm/v1/chat",
        }
        return Reply(200, json_bytes(body))

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
        refused = self._limits.admit_tokens(input_tokens(request, family))
        if refused is not None:
            reply, limit = refused
            if limit is not None:
                self._counters.add(f"over_{limit}")
            return reply
        sighting = self._sighting(body)
        fault = pick_fault(self.options.faults, *sighting) if sighting else None
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
        answer, bad = b"", None
        if fault not in SERVER_ERRORS and fault != "html":
            content = describer.describe(list(request.measured), request.response_schema,
                                         request.prompt_text)
            content = misanswer(content, self.options.packed_answers)
            body_out, bad = self._answer(name, content, request, sighting)
            self._limits.count_output(body_out["usage"]["completion_tokens"])
            answer = json_bytes(body_out)
        remaining = self.options.latency_ms / 1000 - (time.monotonic() - started)
        if remaining > 0:
            self._stopping.wait(remaining)
        if fault in SERVER_ERRORS:
            code, message = SERVER_ERRORS[fault]
            return error_reply(int(fault), code, message, fault=fault)
        if fault == "html":
            return Reply(200, PROXY_PAGE, content_type="text/html; charset=utf-8", fault=fault)
        if fault == "drop":
            return Reply(200, answer, action="drop", fault=fault)
        return Reply(
            200,
            answer,
            headers=(("served-model-name", name),),
            image_digests=tuple(hashlib.sha256(data).hexdigest() for data in request.images),
            bad_answer=bad,
        )

    def _answer(self, name: str, content: str, request: ChatRequest,
                sighting: tuple[str, int] | None) -> tuple[dict[str, Any], str | None]:
        """The chat.completion body for the model's `content`, and which bad answer it was
        made into, if any (pipeline.local.bad_answers)."""
        bad = self.options.bad_answers
        if sighting is None or not bad.active:
            return completion(name, content, request, self.family), None
        key, n = sighting
        kind = bad_answers.pick_bad_answer(bad, key)
        if kind == "cut_off":
            return completion(name, bad_answers.cut_off(content, request.max_tokens), request,
                              self.family, finish_reason="length",
                              completion_tokens=bad_answers.cut_off_tokens(
                                  content, request.max_tokens)), kind
        if kind == "refusal":
            return completion(name, bad_answers.refusal(key), request, self.family,
                              finish_reason="content_filter"), kind
        if request.response_schema is not None and bad_answers.pick_schema_break(bad, key, n):
            broken = bad_answers.break_schema(content, request.response_schema, key, n,
                                              bad.schema_breaks)
            if broken is not None:
                return completion(name, broken[0], request, self.family), "schema_break"
        return completion(name, content, request, self.family), None

    def _sighting(self, body: bytes) -> tuple[str, int] | None:
        """(the body's digest, how often it was seen before): what faults and bad answers
        are chosen by. None when neither is on: no memory grows on a well-behaved server."""
        if not self.options.faults.active and not self.options.bad_answers.active:
            return None
        key = hashlib.sha256(body).hexdigest()
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
        return key, n
