"""Group keys and the rows a group's answers make: pure functions."""

from __future__ import annotations

from pipeline.endpoint.groups import group_key, group_row, member_results
from pipeline.outcomes import ErrorClass, Status


def part(number: int, paths: list[str], tokens: list[int], **overrides) -> dict:
    row = {
        "group_key": "g", "part": number, "paths": paths, "tokens": tokens, "status": "ok",
        "caption": f"answer {number}", "response_json": None, "prompt_tokens": 1000,
        "completion_tokens": 101, "total_tokens": 1101, "usage_source": "endpoint",
        "attempts": 1, "latency_ms": 40 * number, "error_class": None, "error_message": None,
        "throttled": 0, "request_share": 1.0,
    }
    return {**row, **overrides}


def test_group_key_by_folder_or_by_the_first_capture_group() -> None:
    assert group_key("dbfs:/Volumes/m/p/sku-1/front.jpg", "folder") == "dbfs:/Volumes/m/p/sku-1"
    assert group_key("file:/x/SKU-0042_back.png", r"SKU-(\d+)_") == "0042"
    assert group_key("file:/x/logo.png", r"SKU-(\d+)_") is None


def test_members_share_the_usage_and_the_requests_of_their_part() -> None:
    members = member_results(part(1, ["a", "b", "c"], [100, 100, 200], attempts=2))
    assert sum(m["total_tokens"] for m in members) == 1101
    assert sum(m["prompt_tokens"] for m in members) == 1000
    assert members[2]["prompt_tokens"] == 500 and members[0]["usage_source"] == "apportioned"
    assert sum(m["request_share"] for m in members) == 2 and members[0]["caption"] is None


def test_a_failed_part_fails_its_members_with_its_reason() -> None:
    failed = part(1, ["a", "b"], [1, 1], status="failed", caption=None, error_class="timeout",
                  error_message="No answer within 5 s.", prompt_tokens=None,
                  completion_tokens=None, total_tokens=None, usage_source=None)
    members = member_results(failed)
    assert [(m["status"], m["error_class"]) for m in members] == [("failed", "timeout")] * 2
    assert members[0]["total_tokens"] is None


def test_a_split_group_says_so_and_adds_its_parts_up() -> None:
    row = group_row("g", ["b", "a", "c"], "f", [part(2, ["c"], [1]), part(1, ["a", "b"], [1, 1])])
    assert row["status"] == "ok" and row["parts"] == 2 and row["images"] == 3
    assert row["answer"].startswith("Part 1 of 2 (2 images): answer 1")
    assert row["part_answers"] == ["answer 1", "answer 2"]
    assert row["total_tokens"] == 2202 and row["attempts"] == 2 and row["latency_ms"] == 80
    assert row["member_paths"] == ["a", "b", "c"]


def test_one_failed_part_fails_the_group_and_names_the_part() -> None:
    bad = part(2, ["c"], [1], status="failed", caption=None, error_class="server_error",
               error_message="HTTP 500.")
    row = group_row("g", ["a", "c"], "f", [part(1, ["a"], [1]), bad])
    assert row["status"] == "failed" and row["error_class"] == "server_error"
    assert row["error_message"] == "HTTP 500. (part 2 of 2)"


def test_a_group_without_a_valid_member_makes_no_request() -> None:
    row = group_row("g", ["x.pdf"], "f", [])
    assert (row["status"], row["error_class"], row["attempts"]) == (
        Status.INVALID, ErrorClass.NO_VALID_IMAGE, 0)
    assert row["images"] == 0 and row["answer"] is None
