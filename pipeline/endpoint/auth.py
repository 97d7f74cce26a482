"""Host and credentials through the Databricks SDK's unified auth, and secrets that never print.

The SDK resolves DATABRICKS_HOST / DATABRICKS_TOKEN, profiles in ~/.databrickscfg, OAuth (M2M
and U2M) and the notebook/job context, and refreshes what expires. Two kinds of object carry
what it gives:

- `Authenticator`: the SDK's configuration, on the driver, for the whole run. It is asked for
  headers whenever they are needed, never once for the run: OAuth access tokens live an hour,
  and a run can last days. It holds what can mint tokens (a client secret, a refresh token),
  so it refuses to be pickled: it can never travel in a UDF or a Spark plan.
- `Credentials`: one snapshot of the headers, inside `Secret` (its repr and str are masked,
  so it cannot reach a log line, an error message, a table or `df.explain()`). Executors get
  a fresh one with each batch. A snapshot is also a source of itself that cannot be renewed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

from databricks.sdk.core import Config

from pipeline.errors import RunError

# Bound the SDK's own probes (host metadata, OAuth discovery) so a wrong host fails in
# seconds instead of retrying for five minutes.
_SDK_RETRY_SECONDS = 15
_SDK_HTTP_SECONDS = 10


class AuthError(RunError):
    """No usable credentials for the host; the message says what is missing, never a value."""


@dataclass(frozen=True)
class Secret:
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__

    def reveal(self) -> str:
        return self.value


@dataclass(frozen=True)
class Credentials:
    """One snapshot of the request headers for `host`."""

    host: str
    headers: Secret  # "Name: value" lines, so one Secret carries whichever scheme auth chose

    def header_dict(self) -> dict[str, str]:
        lines = self.headers.reveal().splitlines()
        return dict(line.split(": ", 1) for line in lines if ": " in line)

    def current(self) -> Credentials:
        return self

    def refreshed(self, stale: Credentials) -> Credentials:
        """A snapshot cannot be renewed (a personal access token, or a batch's headers on an
        executor): the same one."""
        return self


class CredentialSource(Protocol):
    """Where a client gets its headers: a snapshot, or the driver's `Authenticator`."""

    @property
    def host(self) -> str: ...

    def current(self) -> Credentials: ...

    def refreshed(self, stale: Credentials) -> Credentials: ...


class Authenticator:
    """The SDK's unified auth for one host, on the driver: fresh headers on every `current()`
    (the SDK caches a token until shortly before it expires, then gets a new one)."""

    def __init__(self, host: str) -> None:
        self._config = _config(host)
        self.host = (self._config.host or host).rstrip("/")
        self._lock = threading.Lock()
        self.renewals = 0  # times a refused credential was replaced by a new one
        self.current()  # no usable credentials is an error now, before any work

    def current(self) -> Credentials:
        try:
            headers = self._config.authenticate()
        except Exception as exc:  # the SDK raises many kinds; none of them carries a secret
            raise AuthError(f"cannot authenticate to {self.host}: {type(exc).__name__}") from None
        lines = "\n".join(f"{k}: {v}" for k, v in headers.items())
        return Credentials(self.host, Secret(lines))

    def refreshed(self, stale: Credentials) -> Credentials:
        """New headers after `stale` was refused. If they have changed since (the SDK renewed
        its token, or another request asked first), those; else a new token: the SDK's
        credentials are set up again from the same settings (`init_auth`), which drops the
        token it still trusted."""
        with self._lock:
            now = self.current()
            if now != stale:
                return now
            try:
                self._config.init_auth()
            except Exception as exc:  # as in current(): the kind of error, never a secret
                raise AuthError(
                    f"cannot authenticate to {self.host} again: {type(exc).__name__}") from None
            self.renewals += 1
            return self.current()

    def __reduce__(self) -> tuple:
        raise TypeError("an Authenticator holds what mints tokens: it never leaves the driver")


def static(host: str, token: str) -> Credentials:
    return Credentials(host.rstrip("/"), Secret(f"Authorization: Bearer {token}"))


def environment_host() -> str | None:
    """The host the SDK finds in the environment or the default profile, or None."""
    logging.getLogger("databricks.sdk").setLevel(logging.ERROR)
    try:
        return _config(None).host
    except (ValueError, AuthError):
        return None


def resolve(host: str) -> Authenticator:
    """The SDK's unified auth for `host` (token, profile, OAuth, notebook context)."""
    return Authenticator(host)


def _config(host: str | None) -> Config:
    try:
        return Config(
            host=host,
            retry_timeout_seconds=_SDK_RETRY_SECONDS,
            http_timeout_seconds=_SDK_HTTP_SECONDS,
        )
    except ValueError as exc:
        if host is None:
            raise
        first_line = str(exc).splitlines()[0][:200]
        raise AuthError(f"no credentials for {host}: {first_line}") from None
