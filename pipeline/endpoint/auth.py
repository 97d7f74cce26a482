"""Host and credentials through the Databricks SDK's unified auth, and a secret that never prints.

The SDK resolves DATABRICKS_HOST / DATABRICKS_TOKEN, profiles in ~/.databrickscfg, OAuth and
the notebook context; we only ask it for request headers. Headers travel to executors inside
`Secret`, whose repr and str are masked, so they cannot reach a log line, an error message,
a table or `df.explain()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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
    host: str
    headers: Secret  # "Name: value" lines, so one Secret carries whichever scheme auth chose

    def header_dict(self) -> dict[str, str]:
        lines = self.headers.reveal().splitlines()
        return dict(line.split(": ", 1) for line in lines if ": " in line)


def static(host: str, token: str) -> Credentials:
    return Credentials(host.rstrip("/"), Secret(f"Authorization: Bearer {token}"))


def environment_host() -> str | None:
    """The host the SDK finds in the environment or the default profile, or None."""
    logging.getLogger("databricks.sdk").setLevel(logging.ERROR)
    try:
        return _config(None).host
    except (ValueError, AuthError):
        return None


def resolve(host: str) -> Credentials:
    """Credentials for `host` by the SDK's unified auth (token, profile, OAuth...)."""
    config = _config(host)
    try:
        headers = config.authenticate()
    except Exception as exc:  # the SDK raises many kinds; none of them carries the secret
        raise AuthError(f"cannot authenticate to {host}: {type(exc).__name__}") from None
    lines = "\n".join(f"{k}: {v}" for k, v in headers.items())
    return Credentials(config.host.rstrip("/"), Secret(lines))


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
