"""Groups of files that belong together (`--group-by`): their keys, and the rows their answers
make. Pure functions; pipeline/runs/grouped.py drives them with Spark.

A group is asked about in one request with the group prompt, or in several when it holds
more images or bytes than one request may carry (conf/models.yml). Its answer goes to the
groups table; every member file keeps its own row in the captions table, with its status,
its `group_key` and its share of what the requests cost.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pipeline.endpoint.pacing import HELD
from pipeline.endpoint.packing import apportion_usage
from pipeline.endpoint.payloads import Usage
from pipeline.endpoint.prompt_ids import GROUP_BY_FOLDER  # each file's parent folder
from pipeline.outcomes import ErrorClass, Status

USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


def group_key(path: str, rule: str) -> str | None:
    """The group `path` belongs to: its parent folder, or the first capture group of the
    regular expression `rule` found in it; None when the expression does not match."""
    if rule == GROUP_BY_FOLDER:
        parent = path.rsplit("/", 1)[0]
        return parent or None
    match = _compiled(rule).search(path)
    return match.group(1) if match and match.group(1) else None


@lru_cache(maxsize=8)
def _compiled(rule: str) -> re.Pattern[str]:
    return re.compile(rule)


def no_group_message(rule: str) -> str:
    return f"The path does not match --group-by {rule!r}, so the file belongs to no group."


def member_results(part: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per image of a part (a request of a group): the part's status and errors,
    its usage shared by estimated image tokens, and its requests shared equally. The answer
    itself belongs to the group, so a member's caption stays empty."""
    paths, tokens = list(part["paths"]), list(part["tokens"])
    count = len(paths)
    usage = Usage(*(part[k] for k in USAGE))
    shares = apportion_usage(usage, tokens) if count > 1 else [usage]
    source = part["usage_source"]
    if shares is None:
        shares = [Usage(None, None, None)] * count
    elif count > 1:
        source = "apportioned"
    return [
        {
            "path": path,
            "status": part["status"],
            "caption": None,
            "response_json": None,
            **{k: getattr(share, k) for k in USAGE},
            "usage_source": source if part["status"] == Status.OK else None,
            "attempts": part["attempts"],
            "latency_ms": part["latency_ms"],
            "error_class": part["error_class"],
            "error_message": part["error_message"],
            "finish_reason": part.get("finish_reason"),  # the request's, shared by its images
            "throttled": part["throttled"],
            "request_share": part["attempts"] / count,
            **{k: (part.get(k) or 0.0) / count for k in HELD},
            "task_attempt": part.get("task_attempt"),
        }
        for path, share in zip(paths, shares, strict=True)
    ]


def group_row(
    key: str, members: list[str], fingerprint: str, parts: list[dict[str, Any]]
) -> dict[str, Any]:
    """The groups-table row of one group from its parts (none when no member was valid)."""
    parts = sorted(parts, key=lambda p: p["part"])
    row: dict[str, Any] = {
        "group_key": key,
        "fingerprint": fingerprint,
        "member_paths": sorted(members),
        "images": sum(len(p["paths"]) for p in parts),
        "parts": len(parts),
        "answer": None,
        "part_answers": None,
        "response_json": None,
        **dict.fromkeys(USAGE),
        "usage_source": None,
        "attempts": sum(p["attempts"] for p in parts),
        "latency_ms": max((p["latency_ms"] or 0 for p in parts), default=None),
    }
    if not parts:
        return {**row, "status": Status.INVALID, "error_class": ErrorClass.NO_VALID_IMAGE,
                "latency_ms": None,
                "error_message": "No member of the group is an image that can be sent, so no "
                                 "request was made."}
    for k in USAGE:
        values = [p[k] for p in parts if p[k] is not None]
        row[k] = sum(values) if values else None
    sources = {p["usage_source"] for p in parts if p["usage_source"]}
    row["usage_source"] = "estimated" if "estimated" in sources else (sources or {None}).pop()
    failed = next((p for p in parts if p["status"] != Status.OK), None)
    answers = [p["caption"] for p in parts]
    row["part_answers"] = answers
    if failed is not None:
        note = f" (part {failed['part']} of {len(parts)})" if len(parts) > 1 else ""
        return {**row, "status": Status.FAILED, "error_class": failed["error_class"],
                "error_message": f"{failed['error_message']}{note}"}
    if len(parts) == 1:
        row.update(answer=answers[0], response_json=parts[0]["response_json"])
    else:
        row["answer"] = "\n\n".join(
            f"Part {p['part']} of {len(parts)} ({len(p['paths'])} images): {p['caption']}"
            for p in parts
        )
    return {**row, "status": Status.OK, "error_class": None, "error_message": None}
