"""OAuth machine-to-machine (the client-credentials grant) as a Databricks workspace serves it
to the databricks-sdk, so `Config(host=..., client_id=..., client_secret=...)` (auth type
oauth-m2m) works against the local endpoint and its short-lived tokens can be watched expire.

What the SDK reads, in order: GET /.well-known/databricks-config (its `oidc_endpoint` becomes
the discovery URL), GET /oidc/.well-known/oauth-authorization-server (the token endpoint),
then POST /oidc/v1/token with grant_type=client_credentials and the client id and secret in a
Basic Authorization header (RFC 6749 2.3.1; the form-body variant is accepted too). The access
tokens are random strings, remembered only as SHA-256 digests with their expiry: looking a
token up by its digest leaks no timing about the token itself, and no token is ever kept,
logged or echoed in plain.

No sockets here and nothing heavy imported (the command line imports this module to build its
parser): the server (pipeline.local.server) sends what these return.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qs

DISCOVERY = "/oidc/.well-known/oauth-authorization-server"
TOKEN = "/oidc/v1/token"
AUTHORIZE = "/oidc/v1/authorize"  # advertised because the SDK reads it; not served (no U2M)
SCOPE = "all-apis"  # what a workspace grants a service principal by default

# An expired token is still recognised (401 "expired", not "invalid") for this long, so a
# client holding a stale token is told why; older ones are forgotten, bounding the memory.
_EXPIRED_KEPT_S = 3600.0


@dataclass(frozen=True)
class OAuthClient:
    """The one service principal the endpoint knows, and how long its access tokens last."""

    client_id: str
    client_secret: str = field(repr=False)
    token_lifetime_s: int = 3600

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ValueError("the OAuth client needs a non-empty client id and client secret")
        lifetime = self.token_lifetime_s
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 1:
            # Whole seconds: `expires_in` is an integer, and the SDK's expiry is built from it.
            raise ValueError(
                f"--token-lifetime-seconds must be a whole number, at least 1, not {lifetime!r}"
            )


class Answer(NamedTuple):
    """A token-endpoint answer: status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


def host_metadata(base_url: str, oauth: bool) -> dict[str, Any]:
    """The body of /.well-known/databricks-config. With OAuth, `oidc_endpoint` leads the SDK
    to the discovery document; without, an empty object makes it use the host and token it
    was given (a token-only endpoint advertises no OAuth it cannot serve)."""
    return {"oidc_endpoint": f"{base_url}/oidc"} if oauth else {}


def discovery(base_url: str) -> dict[str, Any]:
    """The OAuth authorization-server metadata (RFC 8414) at DISCOVERY."""
    return {
        "issuer": f"{base_url}/oidc",
        "authorization_endpoint": f"{base_url}{AUTHORIZE}",
        "token_endpoint": f"{base_url}{TOKEN}",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["code"],
        "scopes_supported": [SCOPE],
    }


class TokenIssuer:
    """Mints access tokens for the client, and says whether a presented one is still good."""

    def __init__(self, client: OAuthClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[bytes, float] = {}  # token digest -> when it expires (clock)

    def check(self, token: str) -> str | None:
        """None for a live token this issuer minted; "expired" for one past its lifetime;
        "invalid" for anything else."""
        digest = _digest(token)
        with self._lock:
            expiry = self._expiry.get(digest)
        if expiry is None:
            return "invalid"
        return "expired" if self._clock() >= expiry else None

    def answer(self, authorization: str, content_type: str, body: bytes | None) -> Answer:
        """The answer to a POST on the token endpoint."""
        if body is None or content_type.split(";")[0].strip().lower() != (
                "application/x-www-form-urlencoded"):
            return _error(400, "invalid_request", "The body must be form-encoded.")
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return _error(400, "invalid_request", "The body is not UTF-8.")
        used_basic = authorization[:6].lower() == "basic "
        if used_basic:
            pair = _basic(authorization[6:])
        else:
            pair = (_one(form, "client_id"), _one(form, "client_secret"))
        if not self._is_client(*pair):
            # RFC 6749 5.2: a client that tried Basic is told which scheme to use.
            headers = (("WWW-Authenticate", 'Basic realm="local-endpoint"'),) if used_basic else ()
            return _error(401, "invalid_client", "Client authentication failed.", headers)
        if _one(form, "grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type",
                          "Only the client_credentials grant is supported.")
        lifetime = self.client.token_lifetime_s
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._forget_old(now)
            self._expiry[_digest(token)] = now + lifetime
        body_out = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime,
                    "scope": _one(form, "scope") or SCOPE}
        # RFC 6749 5.1: token answers must not be cached.
        return Answer(200, body_out, (("Cache-Control", "no-store"), ("Pragma", "no-cache")))

    def _is_client(self, client_id: str | None, secret: str | None) -> bool:
        if client_id is None or secret is None:
            return False
        # Both compared, in constant time, whatever the first says.
        same_id = hmac.compare_digest(client_id.encode(), self.client.client_id.encode())
        same_secret = hmac.compare_digest(secret.encode(), self.client.client_secret.encode())
        return same_id & same_secret

    def _forget_old(self, now: float) -> None:
        old = [d for d, expiry in self._expiry.items() if expiry + _EXPIRED_KEPT_S <= now]
        for digest in old:
            del self._expiry[digest]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _basic(value: str) -> tuple[str | None, str | None]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None, None
    client_id, colon, secret = decoded.partition(":")
    return (client_id, secret) if colon else (None, None)


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values and len(values) == 1 else None


def _error(status: int, code: str, description: str,
           headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """An OAuth error (RFC 6749 5.2): what the SDK reads as `error: error_description`."""
    return Answer(status, {"error": code, "error_description": description},
                  (("Cache-Control", "no-store"), *headers))
