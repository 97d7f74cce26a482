"""Request bodies, byte budgets, answers and prompt ids: pure functions."""

from __future__ import annotations

import base64
import json

import pytest

from pipeline.endpoint.payloads import (
    BadResponse,
    PromptSpec,
    base64_length,
    chat_body,
    encode,
    error_message,
    image_byte_budget,
    parse_answer,
)
from pipeline.endpoint.prompt_ids import FOLDER_PATTERN, hashed_text

SPEC = PromptSpec("What is in this image?", max_tokens=100)


def test_body_is_openai_chat_with_a_data_url_per_image() -> None:
    body = chat_body(SPEC, [("image/png", b"\x89PNG..."), ("image/jpeg", b"\xff\xd8")], "ep")
    content = body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": SPEC.prompt}
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\x89PNG..."
    assert content[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert body["model"] == "ep" and body["max_tokens"] == 100
    assert "response_format" not in body and "temperature" not in body


def test_structured_body_carries_the_schema() -> None:
    schema = {"type": "object", "properties": {"caption": {"type": "string"}}}
    body = chat_body(PromptSpec("p", 10, 0.0, schema), [])
    assert body["response_format"]["json_schema"]["schema"] == schema
    assert body["temperature"] == 0.0 and "model" not in body


@pytest.mark.parametrize("limit", [10_000, 4_000_000])
def test_image_budget_keeps_the_whole_request_within_the_limit(limit: int) -> None:
    budget = image_byte_budget(SPEC, limit, 5_000_000, "ep")
    body = encode(chat_body(SPEC, [("image/jpeg", b"x" * budget)], "ep"))
    assert len(body) <= limit
    over = encode(chat_body(SPEC, [("image/jpeg", b"x" * (budget + 3))], "ep"))
    assert len(over) > limit
    assert base64_length(budget) % 4 == 0


def test_image_budget_never_exceeds_the_per_image_limit() -> None:
    assert image_byte_budget(SPEC, 4_000_000, 1000) == 1000


def answer(content, usage=None) -> bytes:
    payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    if usage:
        payload["usage"] = usage
    return json.dumps(payload).encode()


def test_parse_answer_reads_caption_and_usage() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    parsed = parse_answer(answer(" A cat. ", usage), "caption", structured=False)
    assert parsed.caption == "A cat."
    assert (parsed.usage.prompt_tokens, parsed.usage.total_tokens) == (10, 15)


def test_structured_answer_takes_the_caption_field() -> None:
    parsed = parse_answer(answer('{"caption": "A dog", "tags": ["dog"]}'), "caption", True)
    assert parsed.caption == "A dog"
    assert json.loads(parsed.response_json) == {"caption": "A dog", "tags": ["dog"]}
    assert parsed.usage.prompt_tokens is None


@pytest.mark.parametrize(
    ("raw", "structured", "match"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", False, "not JSON"),
        (b'{"choices": []}', False, "no choices"),
        (answer("   "), False, "empty"),
        (answer("not json"), True, "not valid JSON"),
        (answer('{"alt": "x"}'), True, "no string field 'caption'"),
    ],
)
def test_unusable_answers_are_bad_responses(raw: bytes, structured: bool, match: str) -> None:
    with pytest.raises(BadResponse, match=match):
        parse_answer(raw, "caption", structured)


def test_error_message_reads_databricks_errors_only() -> None:
    body = b'{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}'
    assert error_message(body) == "slow down"
    assert error_message(b"<html>") is None


def test_prompt_id_is_stable_and_changes_with_anything_that_shapes_the_answer() -> None:
    # The formula, pinned: the SQL templates build this text (tests/spark/test_prompt_ids.py).
    assert hashed_text([SPEC.prompt, "100", None, None, None, None]) == (
        "vision-batch prompt id 2\n22:What is in this image?\n3:100\n-\n-\n-\n-")
    assert SPEC.prompt_id == PromptSpec("What is in this image?", 100).prompt_id == (
        "728cc542d5411061")
    schema = {"type": "object"}
    others = {
        PromptSpec("What is in this picture?", 100).prompt_id,
        PromptSpec(SPEC.prompt, 101).prompt_id,
        PromptSpec(SPEC.prompt, 100, 0.5).prompt_id,
        PromptSpec(SPEC.prompt, 100, None, schema).prompt_id,
        PromptSpec(SPEC.prompt, 100, None, schema, "alt_text").prompt_id,
        PromptSpec(SPEC.prompt, 100, group_by="folder").prompt_id,
        PromptSpec(SPEC.prompt, 100, group_by=r"/(sku-\d+)/").prompt_id,
    }
    assert SPEC.prompt_id not in others and len(others) == 7
    # What does not change the question does not change the id: the caption field of plain
    # answers, a temperature past six decimals, `folder` and the regex SQL runs for it.
    assert PromptSpec(SPEC.prompt, 100, caption_field="x").prompt_id == SPEC.prompt_id
    assert PromptSpec(SPEC.prompt, 100, 0.2).prompt_id == PromptSpec(
        SPEC.prompt, 100, 0.2000000001).prompt_id
    assert PromptSpec(SPEC.prompt, 100, group_by="folder").prompt_id == PromptSpec(
        SPEC.prompt, 100, group_by=FOLDER_PATTERN).prompt_id
