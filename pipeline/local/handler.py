"""The HTTP side of the local endpoint: reading a request, routing it, writing the reply.

The decisions (auth, limits, faults, the model) are the endpoint's (pipeline.local.server);
this module only knows HTTP/1.1 with keep-alive, bodies that may be too large to keep, and
clients that go away mid-request, which are normal here (timeouts, drop and hang faults).
"""

from __future__ import annotations

import socket
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pipeline.local import oauth
from pipeline.local.protocol import (
    CHAT_COMPLETIONS,
    ENDPOINT_INFO,
    INVOCATIONS,
    WELL_KNOWN,
    Reply,
    error_reply,
    json_bytes,
)

if TYPE_CHECKING:
    from pipeline.local.server import LocalEndpoint

# Bodies longer than this are not even drained: the connection is closed after the 400.
_DRAIN_LIMIT = 256 * 1024 * 1024

# The local endpoint's own routes: its counters, and an outage on demand.
_STATS = "/local/stats"
_OUTAGE = "/local/outage"


class ClientGone(Exception):
    """The client closed the connection before sending the whole body."""


class Server(ThreadingHTTPServer):
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the pooled clients expect
    server_version = "vision-batch-local/0.1"
    sys_version = ""
    timeout = 300  # an idle keep-alive connection is closed after this many seconds
    # Headers and body go out in two writes; with Nagle's algorithm the body would wait for
    # the client's delayed ACK (~40 ms on Linux) on every answer.
    disable_nagle_algorithm = True
    server: Server

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
        if path == WELL_KNOWN:
            # The databricks-sdk probes this when it builds a Config: no token needed.
            self._send(Reply(200, json_bytes(oauth.host_metadata(ep.url, ep._issuer is not None))))
            return
        if path == oauth.DISCOVERY and ep._issuer is not None:
            self._send(Reply(200, json_bytes(oauth.discovery(ep.url))))
            return
        refused = self._refused()
        if refused is not None:
            self._send(refused)
            return
        info = ENDPOINT_INFO.fullmatch(path)
        if path == _STATS:
            self._send(Reply(200, json_bytes(ep.stats())))
        elif info:
            self._send(ep._endpoint_info(unquote(info.group(1))))
        else:
            self._send(_not_found("GET", path))

    def do_POST(self) -> None:
        ep = self.server.endpoint
        path = urlsplit(self.path).path
        invocations = INVOCATIONS.fullmatch(path)
        try:
            body, length = self._read_body(ep.family.max_request_bytes)
        except ClientGone:
            self.close_connection = True
            return
        if path == oauth.TOKEN and ep._issuer is not None:
            self._send(ep._token(self.headers.get("Authorization", ""),
                                 self.headers.get("Content-Type", ""), body))
            return
        if not invocations and path != CHAT_COMPLETIONS:
            refused = self._refused()
            if refused is None and path == _OUTAGE:
                refused = ep._outage_request(body)
            self._send(refused or _not_found("POST", path))
            return
        ep._counters.request()
        # Checked in this order: the token, then the outage (the gateway in front of the
        # model still authenticates), then the limits, which a refused request never uses.
        refused = self._refused(chat=True) or ep._outage_refusal()
        if refused is not None:
            self._send(refused)
            return
        over_rpm = ep._limits.over_rpm()
        if over_rpm is not None:
            ep._counters.refused(over_rpm, "over_rpm")
            self._send(over_rpm)
            return
        if not ep._counters.admit(ep.options.max_concurrency):
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
            ep._counters.release(reply)
        self._send(reply)

    def do_PUT(self) -> None:
        self._other_method()

    do_DELETE = do_PATCH = do_PUT

    def _other_method(self) -> None:
        try:
            self._read_body(self.server.endpoint.family.max_request_bytes)
        except ClientGone:
            self.close_connection = True
            return
        refused = self._refused()
        self._send(refused or _not_found(self.command, urlsplit(self.path).path))

    def _refused(self, chat: bool = False) -> Reply | None:
        """None when the request's bearer token is accepted, else its 401 (counted)."""
        return self.server.endpoint._auth_refusal(self.headers.get("Authorization", ""), chat)

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
                raise ClientGone
            return body, length
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return None, length
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                raise ClientGone
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
        shutdown(self.connection)


def _not_found(method: str, path: str) -> Reply:
    return error_reply(404, "NOT_FOUND", f"No route for {method} {path[:200]}.")


def shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

