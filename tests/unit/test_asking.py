"""Asking (pipeline/endpoint/asking.py) with a fake client: what each request carries, how its
answer becomes rows, when a pack is asked again image by image, and how usage is shared.

Only the network is faked. `FakeClient` has the one method asking.py calls on a
`CaptionClient`, `call(body, parse, cost)`: it records the body (built by the real payloads
and packing code) and answers with a chat-completions response read by the parser it was
handed, as the real client reads a 200, or with a scripted failed `CallResult`, what the real
client returns once its retries are spent. Retries, pacing and HTTP are the client's own:
tests/unit/test_client_logic.py and tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable

import pytest

from pipeline.endpoint.asking import CAPTIONED, GROUP_PART, CallPlan, Member, cost
from pipeline.endpoint.auth import static
from pipeline.endpoint.client import CallResult, ClientSettings
from pipeline.endpoint.pacing import Cost
from pipeline.endpoint.packing import PACKED_FIELD, packed_spec
from pipeline.endpoint.payloads import BadResponse, PromptSpec, data_url, text_tokens
from tests import files

SPEC = PromptSpec("Write alt text.", max_tokens=100)
SETTINGS = ClientSettings("http://fake", static("http://fake", "t"), 1.0, 1, 4)
TOKENS = [100, 300, 50, 550]
MEMBERS = [Member(f"file:/in/{i}.jpg", "image/jpeg", files.jpeg(40 + 7 * i, 30), tokens)
           for i, tokens in enumerate(TOKENS)]
PATHS = [m.path for m in MEMBERS]
PACK_USAGE = {"prompt_tokens": 2345, "completion_tokens": 301, "total_tokens": 2646}
ONE_USAGE = {"prompt_tokens": 700, "completion_tokens": 40, "total_tokens": 740}


class FakeClient:
    """Answers each request about the images it carries: "caption of <path>" for a one-image
    (or group) request, one entry per index for a pack, as `packs` says."""

    def __init__(self, members: Iterable[Member], packs: str | CallResult = "by index",
                 usage: bool = True, fail: dict[str, CallResult] | None = None,
                 attempts: int = 1, held_s: dict[str, float] | None = None) -> None:
        self.paths = {data_url(m.mime, m.image): m.path for m in members}
        # "by index" (in reverse order), "unmapped" (an index out of range), "one missing",
        # "not json", or a failure
        self.packs = packs
        self.usage = usage
        self.fail = fail or {}  # a request carrying this path gets this result
        self.attempts = attempts
        self.held_s = held_s or {}
        self.requests: list[dict] = []
        self.sizes: list[int] = []  # bytes of each request body
        self.costs: list[Cost | None] = []

    def carried(self, request: dict) -> list[str]:
        """The paths of the images in a recorded request, in order."""
        parts = request["messages"][0]["content"]
        return [self.paths[p["image_url"]["url"]] for p in parts if p["type"] == "image_url"]

    async def call(self, body: bytes, parse: Callable[[bytes], object],
                   cost: Cost | None = None) -> CallResult:
        request = json.loads(body)
        self.requests.append(request)
        self.sizes.append(len(body))
        self.costs.append(cost)
        paths = self.carried(request)
        for path, result in self.fail.items():
            if path in paths:
                return result
        if packed(request):
            if isinstance(self.packs, CallResult):
                return self.packs
            content, usage = self.packed_content(paths), PACK_USAGE
        else:
            content, usage = f"caption of {' + '.join(paths)}", ONE_USAGE
        raw = json.dumps({"choices": [{"message": {"content": content}}],
                          "usage": usage if self.usage else {}}).encode()
        try:
            answer = parse(raw)
        except BadResponse as exc:
            return CallResult(None, "bad_response", str(exc), self.attempts, 5)
        return CallResult(answer, None, None, self.attempts, 5, 0, dict(self.held_s))

    def packed_content(self, paths: list[str]) -> str:
        if self.packs == "not json":
            return "Image 1: a gradient. Image 2: another one."
        entries = [{"index": i, "caption": f"caption of {p}"} for i, p in enumerate(paths, 1)]
        entries.reverse()  # matched by index, never by position
        if self.packs == "unmapped":  # an entry for an image that was not sent
            entries.append({"index": len(paths) + 1, "caption": "caption of nothing"})
        if self.packs == "one missing":
            entries = entries[1:]  # the last image has no entry
        return json.dumps({PACKED_FIELD: entries})


def packed(request: dict) -> bool:
    schema = request.get("response_format", {}).get("json_schema", {}).get("schema", {})
    return PACKED_FIELD in schema.get("properties", {})


def plan(**shape) -> CallPlan:
    return CallPlan(SETTINGS, SPEC, None, **{"max_request_bytes": 4_000_000, **shape})


def asked(plan: CallPlan, client: FakeClient, members: list[Member]) -> list[dict]:
    """Every unit of `members` asked, as a caller does; the rows in order."""

    async def go() -> list[dict]:
        return [row for unit in plan.units(members) for row in await plan.ask(client, unit)]

    return asyncio.run(go())


def test_one_image_a_request_each_row_carries_its_answer_usage_and_attempts() -> None:
    client = FakeClient(MEMBERS, attempts=2)
    rows = asked(plan(), client, MEMBERS)
    assert [client.carried(r) for r in client.requests] == [[p] for p in PATHS]
    assert not any(packed(r) for r in client.requests)
    assert client.costs == [cost(SPEC, t) for t in TOKENS]
    assert [(r["path"], r["caption"]) for r in rows] == [(p, f"caption of {p}") for p in PATHS]
    assert set(rows[0]) == {*CAPTIONED, "path"}
    for row in rows:
        assert (row["status"], row["error_class"], row["usage_source"]) == ("ok", None,
                                                                            "endpoint")
        assert {k: row[k] for k in ONE_USAGE} == ONE_USAGE
        assert row["attempts"] == 2 and row["request_share"] == 2.0


def test_an_answer_without_usage_gets_tokens_estimated_from_prompt_image_and_caption() -> None:
    (row,) = asked(plan(), FakeClient(MEMBERS, usage=False), MEMBERS[:1])
    assert row["usage_source"] == "estimated"
    assert row["prompt_tokens"] == TOKENS[0] + text_tokens(SPEC.prompt)
    assert row["completion_tokens"] == text_tokens(f"caption of {PATHS[0]}")
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]


def test_a_pack_without_usage_is_estimated_once_for_the_request_then_shared() -> None:
    rows = asked(plan(images_per_request=4), FakeClient(MEMBERS, usage=False), MEMBERS)
    assert {r["usage_source"] for r in rows} == {"estimated"}
    # The packed prompt is counted once for the request, not once per image.
    prompt = text_tokens(packed_spec(SPEC, 4).prompt) + sum(TOKENS)
    assert sum(r["prompt_tokens"] for r in rows) == prompt
    assert sum(r["completion_tokens"] for r in rows) == sum(
        text_tokens(f"caption of {p}") for p in PATHS)
    assert sum(r["total_tokens"] for r in rows) == sum(
        r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    heaviest = max(rows, key=lambda r: r["prompt_tokens"])
    assert heaviest["path"] == PATHS[TOKENS.index(max(TOKENS))]


def test_a_pack_is_one_request_and_each_row_gets_its_own_answer_and_usage_share() -> None:
    client = FakeClient(MEMBERS, held_s={"itpm": 2.0})
    rows = asked(plan(images_per_request=4), client, MEMBERS)
    (request,) = client.requests
    assert packed(request) and client.carried(request) == PATHS
    assert client.costs == [cost(packed_spec(SPEC, 4), sum(TOKENS))]
    # Answered in reverse order: each caption still lands on the row of its image.
    assert [(r["path"], r["caption"]) for r in rows] == [(p, f"caption of {p}") for p in PATHS]
    for key, total in PACK_USAGE.items():
        assert sum(r[key] for r in rows) == total
    # Shared by estimated image tokens: the 550-token image pays the most.
    assert max(rows, key=lambda r: r["prompt_tokens"])["path"] == PATHS[3]
    assert all(r["usage_source"] == "apportioned" and r["request_share"] == 0.25 for r in rows)
    assert sum(r["waited_itpm_s"] for r in rows) == 2.0


@pytest.mark.parametrize(
    "packs",
    ["unmapped", "not json", CallResult(None, "rejected", "HTTP 400: too many images", 1, 3)],
    ids=["answer-does-not-map", "bad-response", "rejected"],
)
def test_a_pack_that_does_not_map_or_is_refused_is_asked_again_image_by_image(packs) -> None:
    client = FakeClient(MEMBERS, packs=packs)
    rows = asked(plan(images_per_request=4), client, MEMBERS)
    assert [client.carried(r) for r in client.requests] == [PATHS, *([p] for p in PATHS)]
    assert [(r["path"], r["caption"]) for r in rows] == [(p, f"caption of {p}") for p in PATHS]
    # Each row took part in the pack and in its own request: both are counted.
    assert all(r["status"] == "ok" and r["error_class"] is None for r in rows)
    assert all(r["attempts"] == 2 and r["request_share"] == 1.25 for r in rows)
    assert sum(r["request_share"] for r in rows) == len(client.requests)
    # What the pack cost, when its answer said, is shared too: the rows sum to all requests.
    paid = PACK_USAGE if packs == "unmapped" else dict.fromkeys(PACK_USAGE, 0)
    for key in PACK_USAGE:
        assert sum(r[key] for r in rows) == 4 * ONE_USAGE[key] + paid[key]
    source = "apportioned" if packs == "unmapped" else "endpoint"
    assert all(r["usage_source"] == source for r in rows)


def test_an_image_missing_from_a_pack_is_asked_alone_and_the_others_keep_their_answers(
) -> None:
    client = FakeClient(MEMBERS, packs="one missing")
    rows = asked(plan(images_per_request=4), client, MEMBERS)
    assert [client.carried(r) for r in client.requests] == [PATHS, [PATHS[3]]]
    assert [(r["path"], r["caption"]) for r in rows] == [(p, f"caption of {p}") for p in PATHS]
    assert [r["attempts"] for r in rows] == [1, 1, 1, 2]
    assert [r["request_share"] for r in rows] == [0.25, 0.25, 0.25, 1.25]
    assert [r["usage_source"] for r in rows] == ["apportioned"] * 4
    for key in PACK_USAGE:  # the pack shared by all four, the single paid by the fourth
        assert sum(r[key] for r in rows) == PACK_USAGE[key] + ONE_USAGE[key]


@pytest.mark.parametrize("error_class", ["rate_limited", "timeout", "server_error"])
def test_a_pack_that_failed_for_want_of_capacity_is_not_asked_again(error_class) -> None:
    throttled = 3 if error_class == "rate_limited" else 0
    failure = CallResult(None, error_class, "gave up", 3, None, throttled, {"qph": 8.0})
    client = FakeClient(MEMBERS, packs=failure)
    rows = asked(plan(images_per_request=4), client, MEMBERS)
    assert len(client.requests) == 1
    assert [(r["path"], r["status"], r["error_class"]) for r in rows] == [
        (p, "failed", error_class) for p in PATHS]
    assert all(r["caption"] is None and r["total_tokens"] is None for r in rows)
    assert all(r["attempts"] == 3 and r["request_share"] == 0.75 for r in rows)
    assert all(r["throttled"] == throttled and r["waited_qph_s"] == 2.0 for r in rows)


@pytest.mark.parametrize("shape", ["images_per_request", "group_images"])
def test_no_request_holds_more_than_k_images_or_more_than_the_request_bytes(shape) -> None:
    members = [Member(f"file:/in/{i}.jpg", "image/jpeg", files.jpeg(40 + 7 * i, 30), 100,
                      "g" if shape == "group_images" else None) for i in range(7)]
    limit = 4_000  # room for two of these JPEGs in a pack, three in a group request
    client = FakeClient(members)
    rows = asked(plan(**{shape: 4, "max_request_bytes": limit}), client, members)
    carried = [client.carried(r) for r in client.requests]
    assert [p for paths in carried for p in paths] == [m.path for m in members]
    assert all(len(paths) <= 4 for paths in carried)
    assert max(client.sizes) <= limit
    assert len(carried) > 2  # the bytes cut them, not only K
    assert all(r["status"] == "ok" for r in rows)
    if shape == "images_per_request":  # a pack of one is a plain one-image request
        assert [packed(r) for r in client.requests] == [len(c) > 1 for c in carried]


def test_a_group_is_asked_whole_in_parts_of_at_most_group_images() -> None:
    keyed = [m._replace(group_key=key) for m, key in zip(MEMBERS, "aaab", strict=True)]
    grouped = plan(group_images=2)
    assert [[m.path for m in unit] for unit in grouped.units(keyed)] == [PATHS[:3], PATHS[3:]]
    client = FakeClient(keyed)
    rows = asked(grouped, client, keyed)
    assert [client.carried(r) for r in client.requests] == [PATHS[:2], [PATHS[2]], [PATHS[3]]]
    # The user's prompt over all of the part's images, paced as one request.
    assert all(r["messages"][0]["content"][0]["text"] == SPEC.prompt and not packed(r)
               for r in client.requests)
    assert client.costs == [cost(SPEC, 400), cost(SPEC, 50), cost(SPEC, 550)]
    assert [(r["group_key"], r["part"], r["paths"], r["tokens"]) for r in rows] == [
        ("a", 1, PATHS[:2], [100, 300]), ("a", 2, [PATHS[2]], [50]), ("b", 1, [PATHS[3]], [550])]
    assert all(set(r) == set(GROUP_PART) for r in rows)
    assert rows[0]["caption"] == f"caption of {PATHS[0]} + {PATHS[1]}"
    assert {k: rows[0][k] for k in ONE_USAGE} == ONE_USAGE
    assert rows[0]["usage_source"] == "endpoint" and rows[0]["request_share"] == 1.0


def test_a_refused_group_part_fails_alone_and_is_not_asked_image_by_image() -> None:
    keyed = [m._replace(group_key="a") for m in MEMBERS[:3]]
    refused = CallResult(None, "rejected", "HTTP 400: bad image", 1, 3)
    client = FakeClient(keyed, fail={PATHS[2]: refused})
    rows = asked(plan(group_images=2), client, keyed)
    assert [client.carried(r) for r in client.requests] == [PATHS[:2], [PATHS[2]]]
    assert [(r["part"], r["status"], r["error_class"], r["paths"]) for r in rows] == [
        (1, "ok", None, PATHS[:2]), (2, "failed", "rejected", [PATHS[2]])]
    assert rows[1]["caption"] is None and rows[1]["tokens"] == [50]
