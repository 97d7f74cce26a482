"""Packing several images into one request: splitting, matching by index, sharing usage."""

from __future__ import annotations

import json

import pytest

from pipeline.endpoint.packing import (
    PACKED_FIELD,
    apportion,
    apportion_usage,
    packed_spec,
    parse_packed,
    request_room,
    split,
)
from pipeline.endpoint.payloads import (
    BadResponse,
    PromptSpec,
    Usage,
    base64_length,
    chat_body,
    encode,
)
from pipeline.local import describer
from tests import files

SPEC = PromptSpec("Write alt text.", max_tokens=100)


def response(entries: list, usage: dict | None = None) -> bytes:
    content = json.dumps({PACKED_FIELD: entries})
    return json.dumps({"choices": [{"message": {"content": content}}],
                       "usage": usage or {}}).encode()


def test_split_stops_at_the_image_count() -> None:
    assert split([10] * 7, max_images=3, room=10**6, per_image=50) == [[0, 1, 2], [3, 4, 5], [6]]


def test_split_stops_at_the_request_bytes_and_keeps_order() -> None:
    per_image = 60
    cost = base64_length(300) + per_image
    parts = split([300, 300, 300, 300], max_images=5, room=2 * cost, per_image=per_image)
    assert parts == [[0, 1], [2, 3]]


def test_split_gives_an_image_too_large_to_share_a_request_of_its_own() -> None:
    assert split([10, 5000, 10], max_images=5, room=1000, per_image=10) == [[0], [1], [2]]


def test_request_room_is_measured_on_the_real_encoder() -> None:
    room, per_image = request_room(SPEC, 4_000_000, "ep")
    image = b"x" * 3000
    body = encode(chat_body(SPEC, [("image/jpeg", image), ("image/jpeg", image)], "ep"))
    assert len(body) == 4_000_000 - room + 2 * (base64_length(3000) + per_image)


def test_packed_spec_asks_for_one_indexed_answer_per_image() -> None:
    packed = packed_spec(SPEC, 3)
    items = packed.response_schema["properties"][PACKED_FIELD]["items"]
    assert set(items["properties"]) == {"index", "caption"}
    assert "numbered 1 to 3" in packed.prompt and packed.prompt.startswith(SPEC.prompt)


def test_packed_answers_are_matched_by_index_not_position() -> None:
    raw = response([{"index": 2, "caption": "second"}, {"index": 1, "caption": "first"}],
                   {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14})
    packed = parse_packed(raw, 2, SPEC)
    assert [a.caption for a in packed.answers] == ["first", "second"]
    assert packed.usage == Usage(10, 4, 14)


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([{"index": 1, "caption": "a"}, {"index": 2, "caption": "b"},
          {"index": 3, "caption": "c"}], "names image 3 of 2"),
        ([{"index": 1, "caption": "a"}, {"index": 1, "caption": "b"}], "image 1 twice"),
        ([{"index": "1", "caption": "a"}, {"index": 2, "caption": "b"}], "names image '1'"),
    ],
)
def test_answers_whose_indexes_contradict_themselves_are_not_used(entries, problem) -> None:
    packed = parse_packed(response(entries), 2, SPEC)
    assert packed.answers is None and problem in packed.problem and packed.again == []


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([{"index": 1, "caption": "a"}], "no complete entry for image 2"),
        ([{"index": 1, "caption": "a"}, {"index": 2, "caption": " "}],
         "the entry for image 2 has no usable caption"),
        ([{"index": 2, "caption": "b"}, {"index": 1}], "the entry for image 1 has no usable"),
    ],
)
def test_one_missing_or_unusable_entry_leaves_only_its_image_to_ask_again(
    entries, problem
) -> None:
    packed = parse_packed(response(entries), 2, SPEC)
    assert packed.answers is not None and problem in packed.problem
    kept = [a.caption for a in packed.answers if a]
    assert len(kept) == 1 and kept[0] in ("a", "b") and len(packed.again) == 1


def test_a_packed_answer_that_is_not_json_is_a_bad_response() -> None:
    raw = json.dumps({"choices": [{"message": {"content": "Image 1: a cat"}}]}).encode()
    with pytest.raises(BadResponse):
        parse_packed(raw, 2, SPEC)


def test_structured_packed_answers_keep_the_users_schema() -> None:
    schema = {"type": "object", "properties": {"caption": {"type": "string"},
                                               "tags": {"type": "array"}}}
    spec = PromptSpec("p", 10, None, schema)
    raw = response([{"index": 1, "answer": {"caption": "x", "tags": ["a"]}}])
    (answer,) = parse_packed(raw, 1, spec).answers
    assert answer.caption == "x" and json.loads(answer.response_json)["tags"] == ["a"]


def test_apportion_sums_exactly_and_follows_the_weights() -> None:
    shares = apportion(1001, [100, 200, 700])
    assert sum(shares) == 1001 and shares == [100, 200, 701]
    assert apportion(5, [0, 0]) == [3, 2]
    assert apportion(0, [1, 2]) == [0, 0]


def test_usage_is_shared_so_the_rows_sum_to_the_response() -> None:
    usage = Usage(prompt_tokens=2345, completion_tokens=301, total_tokens=2646)
    shares = apportion_usage(usage, [1600, 85, 766, 1600, 3])
    assert sum(s.prompt_tokens for s in shares) == 2345
    assert sum(s.completion_tokens for s in shares) == 301
    assert sum(s.total_tokens for s in shares) == 2646
    assert shares[0].prompt_tokens > shares[1].prompt_tokens
    assert apportion_usage(Usage(None, None, None), [1, 2]) is None


def test_the_local_model_answers_a_packed_schema_per_image() -> None:
    images = [files.jpeg(40 + i, 30) for i in range(3)]
    measured = [describer.measure(data) for data in images]
    spec = packed_spec(SPEC, 3)
    entries = json.loads(describer.describe(measured, spec.response_schema))[PACKED_FIELD]
    assert [e["index"] for e in entries] == [1, 2, 3]
    assert [e["caption"] for e in entries] == [describer.caption(m) for m in measured]


# -- each entry checked on its own (issue #27) -----------------------------------------------

def finished(content: str, finish_reason: str) -> bytes:
    return json.dumps({"choices": [{"message": {"content": content},
                                    "finish_reason": finish_reason}],
                       "usage": {"prompt_tokens": 90, "completion_tokens": 100,
                                 "total_tokens": 190}}).encode()


def test_each_entry_gets_the_finish_reason_of_its_own_text() -> None:
    raw = finished(json.dumps({PACKED_FIELD: [{"index": 1, "caption": "a"},
                                              {"index": 2, "caption": "b"}]}), "stop")
    assert [a.finish_reason for a in parse_packed(raw, 2, SPEC).answers] == ["stop", "stop"]


def test_a_pack_cut_off_keeps_the_entries_written_in_full_and_leaves_the_rest() -> None:
    whole = json.dumps({PACKED_FIELD: [{"index": 2, "caption": "second, in full"},
                                       {"index": 1, "caption": "first, also whole"},
                                       {"index": 3, "caption": "third, cut mid-sentence"},
                                       {"index": 4, "caption": "fourth, never begun"}]})
    cut = whole[: whole.index("cut mid") + 3]  # the cut falls inside entry 3's caption
    packed = parse_packed(finished(cut, "length"), 4, SPEC)
    assert [a and (a.caption, a.finish_reason) for a in packed.answers] == [
        ("first, also whole", "stop"), ("second, in full", "stop"), None, None]
    assert packed.again == [2, 3] and "cut off at max_tokens" in packed.problem
    assert packed.usage == Usage(90, 100, 190)  # what the cut pack cost is kept
    # Cut right after an entry closed, or before any: the same rule.
    after = whole[: whole.index('{"index": 3')]
    assert parse_packed(finished(after, "length"), 4, SPEC).again == [2, 3]
    assert parse_packed(finished('{"answers": [{"ind', "length"), 4, SPEC).again == [0, 1, 2, 3]


def test_a_refused_pack_leaves_every_image_to_be_asked_alone() -> None:
    packed = parse_packed(finished("", "content_filter"), 3, SPEC)
    assert packed.answers == (None, None, None) and packed.again == [0, 1, 2]
    assert "refused" in packed.problem


def test_each_structured_entry_is_checked_against_the_whole_schema_on_its_own() -> None:
    spec = PromptSpec("p", 100, None, files.ANSWER_SCHEMA)
    good = {"caption": "a mug", "category": "product", "count": 1}
    entries = [{"index": 1, "answer": good},
               {"index": 2, "answer": {**good, "category": "not-product"}},
               {"index": 3, "answer": {**good, "count": "many"}},
               {"index": 4, "answer": {"caption": "a desk", "category": "scene"}}]
    packed = parse_packed(finished(json.dumps({PACKED_FIELD: entries}), "stop"), 4, spec)
    assert packed.again == [1, 2, 3]
    assert json.loads(packed.answers[0].response_json) == good
    for said in ("image 2 is no usable answer: The answer breaks the response schema at "
                 "$.category: 'not-product' is not one of",
                 "image 3 is no usable answer: The answer breaks the response schema at "
                 "$.count: 'many' is not of type 'integer'",
                 "image 4 is no usable answer: The answer breaks the response schema at $: "
                 "'count' is a required property"):
        assert said in packed.problem
