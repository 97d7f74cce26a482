"""The captions-table rows of a batch, built on the driver from what is in hand: the listed
entry, the prepared facts, and an answer (asked, reused, or none for an invalid file)."""

from __future__ import annotations

from typing import Any

from pipeline.endpoint.pacing import HELD
from pipeline.images.prepare import Rejected
from pipeline.outcomes import Status
from pipeline.runs.context import RunContext
from pipeline.runs.plan import Entry

FACTS = ("content_sha256", "format", "width", "height", "sent_width", "sent_height",
         "sent_bytes", "estimated_image_tokens")
ANSWER = ("status", "caption", "response_json", "prompt_tokens", "completion_tokens",
          "total_tokens", "usage_source", "attempts", "latency_ms", "error_class",
          "error_message", "finish_reason", "request_share", *HELD,
          "task_attempt")  # HELD and task_attempt: for the run's totals only


def _base(ctx: RunContext, entry: Entry, facts: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": entry.path,
        "size_bytes": entry.length,
        "modified_at": entry.modified_us,
        "endpoint": ctx.endpoint,
        "prompt_id": ctx.prompt_id,
        "run_id": ctx.run_id,
        "group_key": entry.group_key,
        "reused_from": None,
        **dict.fromkeys(FACTS),
    }
    if facts is not None:  # what was read, should the file have changed since the listing
        row.update({k: facts[k] for k in FACTS},
                   size_bytes=int(facts["length"]), modified_at=int(facts["modified_us"]))
    return row


def invalid(ctx: RunContext, entry: Entry, facts: dict[str, Any] | None,
            rejected: Rejected | None = None) -> dict[str, Any]:
    """A file never sent: refused by its length or path (`rejected`), or by preparation."""
    row = {**_base(ctx, entry, facts), **dict.fromkeys(ANSWER), "status": Status.INVALID,
           "attempts": 0, "request_share": 0.0}
    if rejected is not None:
        row.update(error_class=rejected.error_class, error_message=rejected.message,
                   format=rejected.format, width=rejected.width, height=rejected.height,
                   estimated_image_tokens=0)
    else:
        assert facts is not None, "refused by preparation: its facts say why"
        row.update(error_class=facts["error_class"], error_message=facts["error_message"])
    return row


def answered(ctx: RunContext, entry: Entry, facts: dict[str, Any], answer: dict[str, Any],
             reused_from: str | None = None, paid: bool = True) -> dict[str, Any]:
    """A file sent (`paid`), or one that took an answer to the same bytes without a request:
    that costs no request now (attempts 0), and says whose answer it took."""
    row = {**_base(ctx, entry, facts), **{k: answer.get(k) for k in ANSWER},
           "reused_from": reused_from}
    if not paid:
        row.update(attempts=0, request_share=0.0, task_attempt=0, **dict.fromkeys(HELD, 0.0))
    row["request_share"] = float(row["request_share"] or 0.0)
    return row
