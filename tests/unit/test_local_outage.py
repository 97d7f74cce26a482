"""The local endpoint's outage window, over real HTTP on 127.0.0.1: planned by request count,
started on demand (in process and by POST /local/outage), as 503s or dropped connections."""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import pytest

from pipeline.local.command import add_arguments, options_from_args
from pipeline.local.oauth import OAuthClient
from pipeline.local.outage import Outage, OutageWindow
from pipeline.local.server import EndpointOptions, LocalEndpoint

TOKEN = "local-outage-token"  # not a secret: only these in-process servers accept it
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "any", "messages": [{"role": "user", "content": "hello"}]}


class Clock:
    """The outage window's clock, moved by the test: a window of a second stays open for as
    long as a loaded machine takes to send the requests that check it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now


def serving(clock: Clock | None = None, **options: Any) -> LocalEndpoint:
    endpoint = LocalEndpoint(EndpointOptions(token=TOKEN, **options))
    if clock is not None:
        endpoint._outage = OutageWindow(options.get("outage"), clock.monotonic, clock.wall)
    return endpoint


def chat(ep: LocalEndpoint, headers: dict[str, str] = AUTH) -> httpx.Response:
    url = f"{ep.url}/serving-endpoints/any/invocations"
    return httpx.post(url, json=CHAT, headers=headers, timeout=10)


def test_a_planned_outage_opens_at_the_nth_request_and_closes_after_its_seconds() -> None:
    clock = Clock()
    with serving(clock, outage=Outage(after_requests=3, seconds=1.0)) as ep:
        assert [chat(ep).status_code for _ in range(2)] == [200, 200]
        assert ep.stats()["outage_started_at"] is None
        third = chat(ep)  # opens the window, and is refused already
        assert third.status_code == 503
        assert third.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert chat(ep).status_code == 503
        # A request without a token is still told so: the gateway authenticates first.
        assert chat(ep, headers={}).status_code == 401
        # GET routes keep working: endpoint info, stats.
        info = httpx.get(f"{ep.url}/api/2.0/serving-endpoints/any", headers=AUTH)
        assert info.status_code == 200
        during = httpx.get(f"{ep.url}/local/stats", headers=AUTH).json()
        assert during["outage_active"] is True and during["outage_kind"] == "503"
        assert during["outage_refused"] == 2 and during["outage_ended_at"] is None
        assert during["by_status"] == {"200": 2, "503": 2, "401": 1}
        assert during["answered_ok"] == 2 and during["faults"]["503"] == 0
        clock.now += 0.99
        assert chat(ep).status_code == 503
        clock.now += 0.02
        assert chat(ep).status_code == 200
        after = ep.stats()
    assert after["outage_active"] is False and after["outage_refused"] == 3
    assert after["outage_ended_at"] == after["outage_started_at"] + 1.0
    assert after["requests"] == 7 and after["answered_ok"] == 3


def test_refused_requests_use_none_of_the_limits() -> None:
    clock = Clock()
    with serving(clock, outage=Outage(after_requests=1, seconds=0.5), max_rpm=2) as ep:
        assert chat(ep).status_code == 503
        clock.now += 0.55
        assert [chat(ep).status_code for _ in range(3)] == [200, 200, 429]
        assert ep.stats()["over_rpm"] == 1


def test_start_outage_refuses_from_now_for_its_seconds() -> None:
    clock = Clock()
    with serving(clock) as ep:
        assert chat(ep).status_code == 200
        report = ep.start_outage(0.6)
        assert report["outage_active"] is True and report["outage_kind"] == "503"
        assert chat(ep).status_code == 503
        clock.now += 0.65
        assert chat(ep).status_code == 200
        stats = ep.stats()
        assert stats["outage_refused"] == 1 and stats["answered_ok"] == 2
        with pytest.raises(ValueError, match="seconds"):
            ep.start_outage(0)
        with pytest.raises(ValueError, match="kind"):
            ep.start_outage(1, "504")


def test_a_drop_outage_closes_the_connection_without_an_answer(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with serving() as ep:
        ep.start_outage(5, "drop")
        with pytest.raises(httpx.RemoteProtocolError):  # "disconnected without a response"
            chat(ep)
        stats = httpx.get(f"{ep.url}/local/stats", headers=AUTH).json()
        assert stats["outage_refused"] == 1 and stats["outage_kind"] == "drop"
        assert stats["by_status"] == {} and stats["requests"] == 1
        assert stats["faults"]["drop"] == 0  # an outage, not an injected fault
    assert "Traceback" not in capfd.readouterr().err


def test_post_local_outage_needs_a_token_and_a_valid_body() -> None:
    url_of = "{}/local/outage".format
    with serving() as ep:
        refused = httpx.post(url_of(ep.url), json={"seconds": 5})
        assert refused.status_code == 401
        assert chat(ep).status_code == 200  # no outage was started
        for body, says in (({"seconds": -1}, "seconds"), ({"seconds": 1, "kind": "500"}, "kind"),
                           ([1], "body")):
            bad = httpx.post(url_of(ep.url), json=body, headers=AUTH)
            assert bad.status_code == 400 and says in bad.json()["message"]
        started = httpx.post(url_of(ep.url), json={"seconds": 5, "kind": "503"}, headers=AUTH)
        assert started.status_code == 200
        assert started.json()["outage_active"] is True
        assert chat(ep).status_code == 503
        assert httpx.get(url_of(ep.url), headers=AUTH).status_code == 404  # POST only
    # An OAuth access token authorizes it too.
    oauth = OAuthClient("sp", "sp-secret")
    with LocalEndpoint(EndpointOptions(oauth=oauth)) as ep:
        minted = httpx.post(f"{ep.url}/oidc/v1/token", auth=("sp", "sp-secret"),
                            data={"grant_type": "client_credentials"}).json()["access_token"]
        bearer = {"Authorization": f"Bearer {minted}"}
        assert httpx.post(url_of(ep.url), json={"seconds": 5}, headers=bearer).status_code == 200
        assert chat(ep, headers=bearer).status_code == 503


def test_the_window_follows_the_clock_and_counts_requests_from_the_start() -> None:
    now = [50.0]
    window = OutageWindow(Outage(after_requests=2, seconds=10, kind="drop"),
                          clock=lambda: now[0], wall=lambda: 1e9 + now[0])
    assert window.refusal() is None
    assert window.refusal() == "drop"
    now[0] += 9.9
    assert window.refusal() == "drop" and window.report()["outage_active"] is True
    now[0] += 0.1
    assert window.refusal() is None  # closed, and the plan does not open it twice
    report = window.report()
    assert report["outage_started_at"] == 1e9 + 50 and report["outage_ended_at"] == 1e9 + 60


def test_outage_options_are_checked() -> None:
    with pytest.raises(ValueError, match="--outage-after"):
        Outage(after_requests=0, seconds=1)
    with pytest.raises(ValueError, match="--outage-seconds"):
        Outage(after_requests=1, seconds=float("nan"))
    with pytest.raises(ValueError, match="--outage-kind"):
        Outage(after_requests=1, seconds=1, kind="504")


def test_serve_local_outage_flags_are_checked() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from_args(parser.parse_args(
        ["--outage-after", "7", "--outage-seconds", "2.5", "--outage-kind", "drop"]), TOKEN)
    assert options.outage == Outage(7, 2.5, "drop")
    assert options_from_args(parser.parse_args(
        ["--outage-after", "1", "--outage-seconds", "1"]), TOKEN).outage == Outage(1, 1.0)
    assert options_from_args(parser.parse_args([]), TOKEN).outage is None
    with pytest.raises(ValueError, match="--outage-seconds"):
        options_from_args(parser.parse_args(["--outage-after", "3"]), TOKEN)
    with pytest.raises(ValueError, match="--outage-after"):
        options_from_args(parser.parse_args(["--outage-seconds", "3"]), TOKEN)
    with pytest.raises(ValueError, match="--outage-after"):
        options_from_args(parser.parse_args(["--outage-after", "0", "--outage-seconds", "1"]),
                          TOKEN)
