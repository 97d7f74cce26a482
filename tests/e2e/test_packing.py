"""Packed requests against a real local endpoint: answers matched by index, fallback to
single-image requests, usage shared so the rows add up to what the endpoint charged."""

from __future__ import annotations

import asyncio

import httpx

from pipeline.endpoint.asking import CallPlan, ask
from pipeline.endpoint.client import CaptionClient, ClientSettings
from pipeline.endpoint.packing import packed_spec
from pipeline.endpoint.payloads import PromptSpec, chat_body, encode
from pipeline.local import describer
from tests import files

SPEC = PromptSpec("Write alt text.", max_tokens=400)
IMAGES = [("image/jpeg", files.jpeg(40 + 7 * i, 30 + i)) for i in range(4)]
TOKENS = [100, 300, 50, 550]


def ask_all(endpoint, creds, images=IMAGES, tokens=TOKENS) -> list[dict]:
    url = f"{endpoint.url}/serving-endpoints/ep/invocations"
    settings = ClientSettings(url, creds, timeout_s=5.0, max_attempts=2, concurrency=4,
                              backoff_base_s=0.01)
    plan = CallPlan(settings, SPEC, None, tasks=1, images_per_request=len(images),
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


def test_a_missing_or_extra_index_falls_back_to_one_request_per_image(serve) -> None:
    for how in ("missing", "extra"):
        endpoint, creds = serve(packed_answers=how)
        rows = ask_all(endpoint, creds)
        assert endpoint.stats()["requests"] == 1 + len(IMAGES), how
        assert [r["caption"] for r in rows] == expected_captions(), how
        # Each row took part in the packed request and its own: both are counted and paid.
        assert all(r["attempts"] == 2 and r["request_share"] == 1.25 for r in rows), how
        assert all(r["usage_source"] == "apportioned" for r in rows), how
        assert sum(r["request_share"] for r in rows) == endpoint.stats()["requests"]


def test_a_packed_request_the_endpoint_refuses_is_asked_image_by_image(serve) -> None:
    endpoint, creds = serve()
    many = IMAGES + [("image/jpeg", files.jpeg(90 + i, 20)) for i in range(2)]  # 6 > 5
    rows = ask_all(endpoint, creds, many, [10] * 6)
    stats = endpoint.stats()
    assert stats["by_status"] == {"400": 1, "200": 6}
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert all(r["error_class"] is None and r["attempts"] == 2 for r in rows)
