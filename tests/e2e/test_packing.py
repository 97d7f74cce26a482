"""Packed requests against a real local endpoint: answers matched by index, fallback to
single-image requests, usage shared so the rows add up to what the endpoint charged."""

from __future__ import annotations

import asyncio
import json

import httpx

from pipeline.endpoint.asking import CallPlan, ask
from pipeline.endpoint.client import CaptionClient, ClientSettings
from pipeline.endpoint.packing import packed_spec
from pipeline.endpoint.payloads import PromptSpec, chat_body, encode
from pipeline.endpoint.schemas import answer_problem
from pipeline.local import describer
from pipeline.local.bad_answers import BadAnswers
from pipeline.outcomes import ErrorClass, Status
from tests import files

SPEC = PromptSpec("Write alt text.", max_tokens=400)
IMAGES = [("image/jpeg", files.jpeg(40 + 7 * i, 30 + i)) for i in range(4)]
TOKENS = [100, 300, 50, 550]


def ask_all(endpoint, creds, images=IMAGES, tokens=TOKENS, spec=SPEC) -> list[dict]:
    url = f"{endpoint.url}/serving-endpoints/ep/invocations"
    settings = ClientSettings(url, creds, timeout_s=5.0, max_attempts=2, concurrency=4,
                              backoff_base_s=0.01)
    plan = CallPlan(settings, spec, None, tasks=1, images_per_request=len(images),
                    max_request_bytes=4_000_000)

    async def go() -> list[dict]:
        async with CaptionClient(settings) as client:
            return await ask(client, plan, images, tokens)

    return asyncio.run(go())


def expected_captions() -> list[str]:
    return [describer.caption(describer.measure(data)) for _, data in IMAGES]


def endpoint_usage(endpoint, creds) -> dict:
    """What the endpoint charges for the packed request (its answers are deterministic)."""
    body = encode(chat_body(packed_spec(SPEC, len(IMAGES)), IMAGES))
    raw = httpx.post(f"{endpoint.url}/serving-endpoints/ep/invocations", content=body,
                     headers=creds.header_dict(), timeout=5.0)
    return raw.json()["usage"]


def test_a_packed_request_answers_every_image_on_its_own_row(serve) -> None:
    endpoint, creds = serve()
    rows = ask_all(endpoint, creds)
    assert endpoint.stats()["requests"] == 1 and endpoint.stats()["images"] == 4
    assert [r["caption"] for r in rows] == expected_captions()
    assert all(r["status"] == "ok" and r["usage_source"] == "apportioned" for r in rows)
    assert [r["request_share"] for r in rows] == [0.25] * 4
    usage = endpoint_usage(endpoint, creds)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert sum(r[key] for r in rows) == usage[key]
    # Shared by estimated image tokens: the 550-token image pays the most.
    assert max(rows, key=lambda r: r["prompt_tokens"]) is rows[3]


def test_answers_in_the_wrong_order_still_land_on_their_rows(serve) -> None:
    endpoint, creds = serve(packed_answers="reversed")
    rows = ask_all(endpoint, creds)
    assert endpoint.stats()["requests"] == 1
    assert [r["caption"] for r in rows] == expected_captions()


def test_an_extra_index_falls_back_to_one_request_per_image(serve) -> None:
    endpoint, creds = serve(packed_answers="extra")
    rows = ask_all(endpoint, creds)
    assert endpoint.stats()["requests"] == 1 + len(IMAGES)
    assert [r["caption"] for r in rows] == expected_captions()
    # Each row took part in the packed request and its own: both are counted and paid.
    assert all(r["attempts"] == 2 and r["request_share"] == 1.25 for r in rows)
    assert all(r["usage_source"] == "apportioned" for r in rows)
    assert sum(r["request_share"] for r in rows) == endpoint.stats()["requests"]


def test_a_missing_entry_is_asked_alone_and_the_others_keep_theirs(serve) -> None:
    endpoint, creds = serve(packed_answers="missing")
    rows = ask_all(endpoint, creds)
    assert endpoint.stats()["requests"] == 2
    assert [r["caption"] for r in rows] == expected_captions()
    assert [r["attempts"] for r in rows] == [1, 1, 1, 2]
    assert sum(r["request_share"] for r in rows) == endpoint.stats()["requests"]


def test_a_packed_request_the_endpoint_refuses_is_asked_image_by_image(serve) -> None:
    endpoint, creds = serve()
    many = IMAGES + [("image/jpeg", files.jpeg(90 + i, 20)) for i in range(2)]  # 6 > 5
    rows = ask_all(endpoint, creds, many, [10] * 6)
    stats = endpoint.stats()
    assert stats["by_status"] == {"400": 1, "200": 6}
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert all(r["error_class"] is None and r["attempts"] == 2 for r in rows)


# -- a bad entry in a pack (issue #27) -------------------------------------------------------

def test_one_entry_off_the_schema_is_asked_alone_and_the_others_are_kept(serve) -> None:
    # A plain pack answers to the pipeline's own entry schema: one entry loses its caption.
    # The image asked alone is a plain request, which no schema break touches.
    endpoint, creds = serve(bad_answers=BadAnswers(rate_schema_break=1.0))
    rows = ask_all(endpoint, creds)
    assert endpoint.stats()["requests"] == 2
    assert endpoint.stats()["bad_answers"]["schema_break"] == 1
    assert [r["caption"] for r in rows] == expected_captions()
    assert sorted(r["attempts"] for r in rows) == [1, 1, 1, 2]
    assert all(r["status"] == Status.OK and r["finish_reason"] == "stop" for r in rows)


def test_a_structured_entry_that_keeps_breaking_the_schema_fails_alone(serve) -> None:
    spec = PromptSpec("Describe.", max_tokens=400, response_schema=files.ANSWER_SCHEMA)
    endpoint, creds = serve(bad_answers=BadAnswers(rate_schema_break=1.0))
    rows = ask_all(endpoint, creds, spec=spec)
    # The pack, then the broken entry's image alone: broken again at each of its 2 attempts.
    assert endpoint.stats()["requests"] == 1 + 2
    failed = [r for r in rows if r["status"] != Status.OK]
    assert len(failed) == 1 and failed[0]["error_class"] == ErrorClass.SCHEMA_MISMATCH
    assert failed[0]["attempts"] == 3 and failed[0]["response_json"] is None
    assert failed[0]["error_message"].startswith("The answer breaks the response schema at $")
    for row in rows:
        if row["status"] == Status.OK:
            assert answer_problem(json.loads(row["response_json"]), files.ANSWER_SCHEMA) is None


def test_a_pack_cut_off_keeps_its_whole_entries_and_asks_the_rest_alone(serve) -> None:
    endpoint, creds = serve(bad_answers=BadAnswers(rate_cut_off=1.0))
    rows = ask_all(endpoint, creds)
    kept = [(r, whole) for r, whole in zip(rows, expected_captions(), strict=True)
            if r["status"] == Status.OK]
    cut = [r for r in rows if r["status"] != Status.OK]
    assert kept and cut  # the cut fell inside the pack: some entries were whole
    # A kept caption is the whole caption, never the cut one; it ended by itself.
    assert all(r["caption"] == whole and r["finish_reason"] == "stop" and r["attempts"] == 1
               for r, whole in kept)
    # The rest were asked alone (and cut again there: this endpoint cuts every answer).
    assert endpoint.stats()["requests"] == 1 + len(cut)
    assert all((r["error_class"], r["finish_reason"], r["attempts"]) ==
               (ErrorClass.CUT_OFF, "length", 2) for r in cut)


def test_a_refused_pack_is_asked_image_by_image(serve) -> None:
    endpoint, creds = serve(bad_answers=BadAnswers(rate_refusal=1.0))
    rows = ask_all(endpoint, creds)
    assert endpoint.stats()["requests"] == 1 + len(IMAGES)
    assert all((r["status"], r["error_class"], r["finish_reason"]) ==
               (Status.FAILED, ErrorClass.REFUSED, "content_filter") for r in rows)
