"""The local endpoint over real HTTP: official clients, limits, concurrency and faults."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from PIL import Image

from pipeline.endpoint.payloads import PromptSpec, chat_body, data_url, encode
from pipeline.images.limits import load_catalog
from pipeline.local import describer
from pipeline.local.command import add_arguments, options_from_args, serve
from pipeline.local.faults import Faults
from pipeline.local.server import EndpointOptions, LocalEndpoint

TOKEN = "local-test-token"  # not a secret: only these in-process servers accept it
NAME = "local-test-endpoint"
PROMPT = "Describe this image in one sentence."
GENERIC = load_catalog().families["generic"]


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), **save: Any) -> bytes:
    img = Image.new("RGB", size, (30, 90, 200))
    img.paste((250, 250, 250), (0, 0, size[0] // 3, size[1]))  # a white band: two colours
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


JPEG = image_bytes()


def body(images: list[tuple[str, bytes]] | None = None, **spec: Any) -> bytes:
    images = [("image/jpeg", JPEG)] if images is None else images
    return encode(chat_body(PromptSpec(PROMPT, max_tokens=300, **spec), images, model=NAME))


@contextmanager
def serving(**options: Any) -> Iterator[LocalEndpoint]:
    with LocalEndpoint(EndpointOptions(token=TOKEN, endpoint_name=NAME, **options)) as ep:
        yield ep


@pytest.fixture
def endpoint() -> Iterator[LocalEndpoint]:
    with serving() as ep:
        yield ep


def post(ep: LocalEndpoint, content: bytes, token: str | None = TOKEN, **kw: Any):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{ep.url}/serving-endpoints/chat/completions"
    return httpx.post(url, content=content, headers=headers, timeout=kw.pop("timeout", 10), **kw)


# -- official clients --------------------------------------------------------------------------


def test_openai_client_gets_a_caption_and_usage(endpoint: LocalEndpoint) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{endpoint.url}/serving-endpoints", api_key=TOKEN, max_retries=0)
    with client:
        response = client.chat.completions.create(
            model=NAME,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": PROMPT},
                        {"type": "image_url", "image_url": {"url": data_url("image/jpeg", JPEG)}},
                    ],
                }
            ],
            max_tokens=300,
        )
    text = response.choices[0].message.content
    assert "64x48 pixels" in text and "local reference model" in text
    assert "blue" in text and "white" in text
    usage = response.usage
    assert usage.prompt_tokens == math.ceil(len(PROMPT) / 4) + GENERIC.image_tokens(64, 48)
    assert usage.completion_tokens == math.ceil(len(text) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stats = endpoint.stats()
    assert stats["answered_ok"] == stats["requests"] == 1
    assert stats["images"] == stats["image_digests_answered"] == 1
    assert stats["rejected_400"] == 0 and stats["in_flight"] == 0


def test_databricks_sdk_gets_and_queries(
    endpoint: LocalEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import ChatMessage, ChatMessageRole, EndpointStateReady

    # Only the explicit host and token may count: no profile, no ambient credentials.
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "absent.cfg"))
    w = WorkspaceClient(host=endpoint.url, token=TOKEN, auth_type="pat")
    info = w.serving_endpoints.get(NAME)
    assert info.name == NAME and info.state.ready == EndpointStateReady.READY
    result = w.serving_endpoints.query(
        name=NAME, messages=[ChatMessage(role=ChatMessageRole.USER, content="hello")]
    )
    assert result.choices[0].message.content == describer.NO_IMAGE
    assert result.usage.prompt_tokens == 2  # ceil(len("hello") / 4), no images
    assert result.usage.total_tokens == 2 + result.usage.completion_tokens
    assert endpoint.stats()["answered_ok"] == 1


# -- auth, routes and limits -------------------------------------------------------------------


def test_wrong_or_missing_token_is_401(endpoint: LocalEndpoint) -> None:
    for token in ("wrong-token", None):
        response = post(endpoint, body(), token=token)
        assert response.status_code == 401
        assert response.json()["error_code"] == "UNAUTHENTICATED"
    stats_url = f"{endpoint.url}/local/stats"
    assert httpx.get(stats_url).status_code == 401
    # The SDK's discovery probe needs no token.
    assert httpx.get(f"{endpoint.url}/.well-known/databricks-config").json() == {}
    stats = httpx.get(stats_url, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert stats["unauthorized"] == 3 and stats["requests"] == 2
    assert stats["by_status"] == {"401": 2} and stats["answered_ok"] == 0


def test_unknown_routes_and_names_are_404(endpoint: LocalEndpoint) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    other = httpx.get(f"{endpoint.url}/api/2.0/serving-endpoints/other", headers=auth)
    assert other.status_code == 404 and other.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    invoke = httpx.post(
        f"{endpoint.url}/serving-endpoints/other/invocations", content=body(), headers=auth
    )
    assert invoke.status_code == 404 and invoke.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert httpx.get(f"{endpoint.url}/nowhere", headers=auth).status_code == 404
    no_model = encode({"messages": [{"role": "user", "content": "hi"}]})
    assert post(endpoint, no_model).status_code == 400


def _too_many_images() -> bytes:
    return body([("image/jpeg", JPEG)] * (GENERIC.max_images_per_request + 1))


def _over_request_bytes() -> bytes:
    return encode(chat_body(PromptSpec("x" * GENERIC.max_request_bytes, 10), [], model=NAME))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_too_many_images, "images"),
        (_over_request_bytes, "bytes"),
        (lambda: body([("image/png", image_bytes("GIF"))]), "declared image/png but"),
        (lambda: body([("image/tiff", image_bytes("TIFF"))]), "image/tiff"),
        (lambda: body([("image/jpeg", JPEG[: len(JPEG) // 2])]), "cannot be decoded"),
        (lambda: body().replace(b";base64,", b";base64,*"), "base64"),
    ],
    ids=["too-many-images", "over-max-request-bytes", "gif-as-png", "tiff", "truncated",
         "bad-base64"],
)
def test_limit_breaches_are_400(endpoint: LocalEndpoint, make: Any, says: str) -> None:
    response = post(endpoint, make())
    assert response.status_code == 400
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert says in response.json()["message"]
    stats = endpoint.stats()
    assert stats["rejected_400"] == 1 and stats["by_status"] == {"400": 1}
    assert stats["answered_ok"] == 0 and stats["in_flight"] == 0


def test_valid_edge_cases_are_answered(endpoint: LocalEndpoint) -> None:
    # A camera's MPO is a JPEG; exactly the image limit is allowed; PNG is in the family.
    frames = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (30, 200, 30))]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    five = [("image/jpeg", buf.getvalue()), ("image/png", image_bytes("PNG"))] + [
        ("image/jpeg", JPEG)
    ] * (GENERIC.max_images_per_request - 2)
    response = post(endpoint, body(five))
    assert response.status_code == 200, response.text
    lines = response.json()["choices"][0]["message"]["content"].splitlines()
    assert [line.split(":")[0] for line in lines] == [f"Image {i}" for i in range(1, 6)]
    assert "mostly red" in lines[0]
    stats = endpoint.stats()
    assert stats["rejected_400"] == 0 and stats["images"] == 5
    assert stats["image_digests_answered"] == 3


# -- concurrency -------------------------------------------------------------------------------


def test_max_concurrency_refuses_the_excess_at_once() -> None:
    limit, extra = 3, 2
    with serving(max_concurrency=limit, latency_ms=800, faults=Faults(retry_after="1")) as ep:
        start = threading.Barrier(limit + extra)
        responses: list[httpx.Response] = []

        def one() -> None:
            start.wait(timeout=5)
            responses.append(post(ep, body()))

        threads = [threading.Thread(target=one) for _ in range(limit + extra)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        refused = [r for r in responses if r.status_code == 429]
        assert len(responses) == limit + extra and len(refused) == extra
        assert all(r.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED" for r in refused)
        assert all(r.headers.get("Retry-After") == "1" for r in refused)
        stats = ep.stats()
        assert stats["max_in_flight"] == limit and stats["in_flight"] == 0
        assert stats["by_status"] == {"200": limit, "429": extra}
        assert stats["faults"]["429"] == 0  # capacity refusals are not injected faults


def test_back_to_back_requests_never_meet_a_stale_count() -> None:
    # The count drops before the answer is written, so one keep-alive client at the limit
    # always gets in.
    with serving(max_concurrency=1) as ep, httpx.Client(timeout=5) as client:
        url = f"{ep.url}/serving-endpoints/{NAME}/invocations"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        statuses = [client.post(url, content=body(), headers=auth).status_code for _ in range(30)]
    assert statuses == [200] * 30


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "INTERNAL_ERROR"), (502, "TEMPORARILY_UNAVAILABLE"),
     (503, "TEMPORARILY_UNAVAILABLE"), (504, "TEMPORARILY_UNAVAILABLE"),
     (429, "REQUEST_LIMIT_EXCEEDED")],
)
def test_error_faults(status: int, code: str) -> None:
    http_date = "Wed, 21 Oct 2015 07:28:00 GMT"
    faults = Faults(**{f"rate_{status}": 1.0}, retry_after=http_date)
    with serving(faults=faults) as ep:
        response = post(ep, body())
        assert response.status_code == status and response.json()["error_code"] == code
        assert response.headers.get("Retry-After") == (http_date if status == 429 else None)
        stats = ep.stats()
    assert stats["faults"][str(status)] == 1 and stats["by_status"] == {str(status): 1}
    assert stats["answered_ok"] == 0


def test_html_fault_is_a_200_proxy_page() -> None:
    with serving(faults=Faults(rate_html=1.0)) as ep:
        response = post(ep, body())
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<html>" in response.text
        assert ep.stats()["answered_ok"] == 0 and ep.stats()["faults"]["html"] == 1


def test_drop_fault_breaks_the_read_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    with serving(faults=Faults(rate_drop=1.0)) as ep:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            post(ep, body())
        time.sleep(0.1)  # let the handler thread finish before looking at stderr
        assert ep.stats()["faults"]["drop"] == 1
    assert "Traceback" not in capfd.readouterr().err


def test_hang_fault_times_the_client_out_and_stop_is_fast() -> None:
    ep = LocalEndpoint(EndpointOptions(token=TOKEN, faults=Faults(rate_hang=1.0))).start()
    try:
        with pytest.raises(httpx.ReadTimeout):
            post(ep, body(), timeout=0.5)
        assert ep.stats()["in_flight"] == 1  # still hanging
    finally:
        started = time.monotonic()
        ep.stop()
        assert time.monotonic() - started < 2.0
    ep.stop()  # idempotent


def test_faults_repeat_per_body_whatever_the_order() -> None:
    faults = Faults(rate_500=0.5, seed=11)
    first, second = body(), body([("image/png", image_bytes("PNG"))])

    def statuses(order: list[bytes]) -> dict[bytes, list[int]]:
        seen: dict[bytes, list[int]] = {first: [], second: []}
        with serving(faults=faults) as ep:
            for content in order:
                seen[content].append(post(ep, content).status_code)
        return seen

    grouped = statuses([first] * 8 + [second] * 8)
    interleaved = statuses([second, first] * 8)
    assert grouped == interleaved
    assert {200, 500} <= set(grouped[first] + grouped[second])


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="--rate-500"):
        Faults(rate_500=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        Faults(rate_429=0.6, rate_drop=0.6)


# -- structured answers and the describer ------------------------------------------------------


def test_response_schema_answers_fill_every_property(endpoint: LocalEndpoint) -> None:
    schema = {
        "type": "object",
        "properties": {
            "caption": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "has_people": {"type": "boolean"},
            "score": {"type": "number"},
            "objects": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["caption"],
    }
    response = post(endpoint, body(response_schema=schema))
    answer = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(answer) == set(schema["properties"])
    assert "local reference model" in answer["caption"]
    assert {"blue", "landscape"} <= set(answer["tags"])
    assert (answer["width"], answer["height"]) == (64, 48)
    assert answer["has_people"] is False and answer["score"] == 0 and answer["objects"] == []
    plain = httpx.post(
        f"{endpoint.url}/serving-endpoints/{NAME}/invocations",
        json={"messages": [{"role": "user", "content": "hi"}],
              "response_format": {"type": "json_object"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert json.loads(plain.json()["choices"][0]["message"]["content"])["width"] == 0


def test_describer_is_deterministic_and_honours_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated = image_bytes(exif=exif)
    m = describer.measure(rotated)
    assert (m.width, m.height, m.orientation) == (48, 64, "portrait")
    assert describer.measure(rotated) == m
    assert describer.answer("", [], None) == describer.NO_IMAGE
    assert describer.answer("", [JPEG], None) == describer.caption(describer.measure(JPEG))
    # A prompt that asks for a list or tags gets the measured tags, not a sentence.
    tags = describer.answer("List the main things.", [JPEG], None)
    assert tags == describer.listed(describer.measure(JPEG)) and tags.count(",") >= 1
    assert describer.answer("Describe the realist painting.", [JPEG], None) == \
        describer.caption(describer.measure(JPEG))


def test_serve_needs_a_token(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.delenv("DATABRICKS_TOKEN", raising=False)
    assert serve(parser.parse_args([])) == 2
    assert "DATABRICKS_TOKEN" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--rate-drop"):
        options_from_args(parser.parse_args(["--rate-drop", "2"]), TOKEN)
    options = options_from_args(
        parser.parse_args(["--model-family", "gemma3", "--seed", "4"]), TOKEN)
    assert options.family.name == "gemma3" and options.faults.seed == 4


def test_serve_local_serves_oauth_and_outages_without_a_static_token(tmp_path: Any) -> None:
    """`vision-batch serve-local` as its own process: OAuth from its environment (no
    DATABRICKS_TOKEN), a planned outage from flags, another one started over HTTP."""
    from databricks.sdk.core import Config

    client_id, secret = "serve-local-sp", "serve-local-sp-secret"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(DATABRICKS_CLIENT_ID=client_id, DATABRICKS_CLIENT_SECRET=secret,
               DATABRICKS_CONFIG_FILE=str(tmp_path / "absent.cfg"))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve-local", "--port", "0",
         "--token-lifetime-seconds", "120", "--outage-after", "2", "--outage-seconds", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        assert process.stdout is not None
        found = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
        assert found, process.stderr.read() if process.stderr else ""
        url = found.group(0)
        assert "last 120 s" in process.stdout.readline()
        sdk = Config(host=url, client_id=client_id, client_secret=secret,
                     config_file=str(tmp_path / "absent.cfg"))
        headers = sdk.authenticate()
        chat = f"{url}/serving-endpoints/{NAME}/invocations"
        first = httpx.post(chat, content=body(), headers=headers, timeout=10)
        assert first.status_code == 200, first.text
        assert httpx.post(chat, content=body(), headers=headers, timeout=10).status_code == 503
        start = httpx.post(f"{url}/local/outage", json={"seconds": 60, "kind": "drop"},
                           headers=headers, timeout=10)
        assert start.status_code == 200 and start.json()["outage_kind"] == "drop"
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(chat, content=body(), headers=headers, timeout=10)
        stats = httpx.get(f"{url}/local/stats", headers=headers, timeout=10).json()
        assert stats["tokens_issued"] == 1 and stats["outage_refused"] == 2
        assert stats["answered_ok"] == 1 and stats["outage_active"] is True
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert secret not in out + err and "Traceback" not in err
