"""The faults the local endpoint injects, and the packed answers it can garble.

A real endpoint fails in ways a client must survive: 429s, 5xx, requests that hang, a proxy's
HTML page where JSON was due, connections dropped mid-answer. These are chosen here
deterministically: the fault for a request is a function of the seed, the body's digest and
how often that body was seen, so the same body gets the same fault sequence whatever order
requests arrive in, and a failure seen once can be replayed. No sockets and no model here: the
server (pipeline.local.server) applies what this module picks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

FAULT_KINDS = ("429", "500", "502", "503", "504", "hang", "html", "drop")
# ordered: as measured; reversed: entries in reverse order (indexes still right);
# missing: the last entry left out; extra: one entry for an image that was not sent.
PACKED_ANSWERS = ("ordered", "reversed", "missing", "extra")

# The error code and message of each 5xx fault.
SERVER_ERRORS = {
    "500": ("INTERNAL_ERROR", "The model server failed while handling the request."),
    "502": ("TEMPORARILY_UNAVAILABLE", "Bad gateway: the model server did not answer."),
    "503": ("TEMPORARILY_UNAVAILABLE", "The endpoint is temporarily unavailable."),
    "504": ("TEMPORARILY_UNAVAILABLE", "Gateway timeout: the model server took too long."),
}

# The html fault: what a proxy in front of the model answers, with a 200.
PROXY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body>"
    b"<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)


def check_share(flag: str, rate: float) -> None:
    """A share is a probability: a one-line error naming its flag when it is not."""
    if not 0.0 <= rate <= 1.0:  # also false for NaN
        raise ValueError(f"{flag} must be between 0 and 1, not {rate}")


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
            check_share(f"--rate-{kind}", self.rate(kind))
        total = sum(self.rate(kind) for kind in FAULT_KINDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"the --rate-* flags sum to {total:g}; they must sum to at most 1")
        if not self.hang_s >= 0:
            raise ValueError(f"--hang-seconds must be zero or more, not {self.hang_s}")

    def rate(self, kind: str) -> float:
        return float(getattr(self, f"rate_{kind}"))

    @property
    def active(self) -> bool:
        return any(self.rate(kind) > 0 for kind in FAULT_KINDS)


def uniform(*parts: object) -> float:
    """A number in [0, 1) that is a function of `parts` only: what every deterministic choice
    of the local endpoint (here and in pipeline.local.bad_answers) is drawn from."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_share(u: float, shares: Iterable[tuple[str, float]]) -> str | None:
    """The kind whose share `u` falls in, the shares laid end to end from 0; None past them."""
    edge = 0.0
    for kind, share in shares:
        edge += share
        if u < edge:
            return kind
    return None


def pick_fault(faults: Faults, key: str, n: int) -> str | None:
    """The fault for the `n`-th sighting of body digest `key`: a function of (seed, key, n)
    only, so concurrency and request order cannot change it."""
    return pick_share(uniform(faults.seed, key, n),
                      ((kind, faults.rate(kind)) for kind in FAULT_KINDS))


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
