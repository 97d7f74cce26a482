"""What the local endpoint counts, so tests and benchmarks can check what it saw: requests and
their statuses, refusals by cause, concurrency, idle time, images answered.

One lock guards all the counters, so a snapshot is consistent. A request leaves flight and is
counted before its answer is written (`release`): a client that sends its next request the
moment it reads an answer must never meet a stale count.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from pipeline.local.bad_answers import BAD_ANSWER_KINDS
from pipeline.local.faults import FAULT_KINDS
from pipeline.local.protocol import Reply


def fresh_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "answered_ok": 0,
        "by_status": {},
        "faults": dict.fromkeys(FAULT_KINDS, 0),
        # 200 answers that are no captions (pipeline.local.bad_answers), by kind
        "bad_answers": dict.fromkeys(BAD_ANSWER_KINDS, 0),
        "rejected_400": 0,
        "over_rpm": 0,  # 429s from the per-minute cap
        # 429s from the token and query limits, by the limit that refused
        "over_itpm": 0, "over_otpm": 0, "over_qph": 0,
        "unauthorized": 0,  # 401s on every route, token endpoint included
        # ... of which: a token minted here that had expired; a wrong OAuth client id/secret
        "unauthorized_expired": 0,
        "invalid_client": 0,
        "tokens_issued": 0,  # OAuth access tokens minted
        "outage_refused": 0,  # chat requests refused by an outage (pipeline.local.outage)
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


class Counters:
    """The endpoint's counters. `requests` and `by_status` count POSTs to the chat routes; a
    dropped or hung request has no status; `unauthorized` counts 401s on every route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = fresh_stats()
        self._digests: set[str] = set()  # distinct images answered

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snapshot: dict[str, Any] = json.loads(json.dumps(self._stats))
            snapshot["image_digests_answered"] = len(self._digests)
        return snapshot

    def reset(self) -> None:
        """Zero the counters; requests in flight stay counted."""
        with self._lock:
            in_flight = self._stats["in_flight"]
            self._stats = fresh_stats()
            self._stats["in_flight"] = self._stats["max_in_flight"] = in_flight
            self._digests.clear()

    def add(self, *names: str) -> None:
        """One more for each counter named."""
        with self._lock:
            for name in names:
                self._stats[name] += 1

    def request(self) -> None:
        """A chat request arrived."""
        with self._lock:
            self._stats["requests"] += 1
            if self._stats["first_request_at"] is None:
                self._stats["first_request_at"] = time.time()

    def refused(self, reply: Reply, *names: str) -> None:
        """A chat request refused before admission: its status, and the counters named."""
        with self._lock:
            self._count_status(reply)
            for name in names:
                self._stats[name] += 1

    def admit(self, limit: int | None) -> bool:
        """Into flight, unless `limit` requests already are."""
        with self._lock:
            s = self._stats
            if limit is not None and s["in_flight"] >= limit:
                return False
            if s["in_flight"] == 0 and s["idle_since"] is not None:
                gap = time.time() - s["idle_since"]
                s["idle_s"] += gap
                s["idle_gaps_over_1s"] += gap >= 1.0
            s["in_flight"] += 1
            s["max_in_flight"] = max(s["max_in_flight"], s["in_flight"])
            return True

    def release(self, reply: Reply | None) -> None:
        """Out of flight, with the answer it got (None: the handler failed before one)."""
        with self._lock:
            s = self._stats
            s["in_flight"] -= 1
            if s["in_flight"] == 0:
                s["idle_since"] = time.time()
            if reply is None:
                return
            self._count_status(reply)
            if reply.fault:
                s["faults"][reply.fault] += 1
            if reply.bad_answer:
                s["bad_answers"][reply.bad_answer] += 1
            if reply.status == 400:
                s["rejected_400"] += 1
            if reply.answered_ok:
                s["last_answer_at"] = time.time()
                s["answered_ok"] += 1
                s["images"] += len(reply.image_digests)
                self._digests.update(reply.image_digests)

    def _count_status(self, reply: Reply) -> None:
        if reply.action == "send":  # a dropped or hung request never got a whole answer
            by_status = self._stats["by_status"]
            by_status[str(reply.status)] = by_status.get(str(reply.status), 0) + 1
