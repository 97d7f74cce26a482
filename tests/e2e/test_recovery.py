"""The run's recovery (pipeline/runs/recovery.py) against a real local endpoint: an outage
waited out with a few probes, or past its limit one line; refused credentials renewed, or,
refused again right after, one line."""

from __future__ import annotations

import time

import pytest

from pipeline.endpoint.auth import AuthError, static
from pipeline.endpoint.breaker import Breaker
from pipeline.interrupts import Stop
from pipeline.local.oauth import OAuthClient
from pipeline.local.server import EndpointOptions, LocalEndpoint
from pipeline.runs import recovery
from pipeline.runs.recovery import OutageError, Recovery

PUT_OFF = {"status": "deferred", "error_class": "server_error",
           "error_message": "The endpoint answered HTTP 503: The endpoint is temporarily "
                            "unavailable."}


def chat_url(endpoint: LocalEndpoint) -> str:
    return f"{endpoint.url}/serving-endpoints/ep/invocations"


def test_an_outage_is_waited_out_with_a_few_probes_then_the_breaker_closes(
    serve, monkeypatch
) -> None:
    monkeypatch.setattr(recovery, "PROBE_FIRST_S", 0.2)
    monkeypatch.setattr(recovery, "PROBE_MAX_S", 0.8)
    endpoint, creds = serve()
    lines: list[str] = []
    breaker = Breaker()
    watch = Recovery(creds, chat_url(endpoint), None, 60, lines.append, Stop(), breaker=breaker)
    endpoint.start_outage(3)
    for _ in range(5):
        breaker.failed(first=True, message=PUT_OFF["error_message"])
    assert breaker.open
    began = time.monotonic()
    watch.ready()
    waited = time.monotonic() - began
    assert 2.5 <= waited < 6 and not breaker.open
    (outage,) = watch.outages
    stats = endpoint.stats()
    # Probes at 0.2, 0.4, 0.8, 0.8... s apart: a handful in 3 s, the last one answered.
    assert outage.probes == stats["outage_refused"] + 1 <= 8
    assert lines[0].startswith("endpoint down since ") and "HTTP 503" in lines[0]
    assert lines[1].startswith("endpoint back after ")
    assert watch.said() == [f"  waited  endpoint down {outage.seconds:.0f} s in 1 outage(s), "
                            f"{outage.probes} probe(s); 0 file(s) put off and asked again"]


def test_an_outage_longer_than_the_limit_ends_the_run_in_one_line(serve, monkeypatch) -> None:
    monkeypatch.setattr(recovery, "PROBE_FIRST_S", 0.2)
    endpoint, creds = serve()
    endpoint.start_outage(60)
    watch = Recovery(creds, chat_url(endpoint), None, 1, lambda _: None, Stop())
    watch.note([PUT_OFF], files=4)
    with pytest.raises(OutageError) as raised:
        watch.ready()
    message = str(raised.value)
    assert "\n" not in message and "HTTP 503" in message
    assert "--max-outage-seconds 1" in message and "a rerun resumes" in message
    assert endpoint.stats()["outage_refused"] <= 3


def test_a_stop_ends_the_wait_at_once(serve) -> None:
    endpoint, creds = serve()
    endpoint.start_outage(60)
    stop = Stop()
    watch = Recovery(creds, chat_url(endpoint), None, 600, lambda _: None, stop)
    watch.note([PUT_OFF], files=1)
    stop.request()
    began = time.monotonic()
    watch.ready()  # returns: the loop sees the stop
    assert time.monotonic() - began < 1


def test_refused_credentials_are_renewed_through_the_sdk_and_a_refusal_after_is_one_line(
) -> None:
    from pipeline.endpoint import auth

    client = OAuthClient("sp", "sp-secret-value", token_lifetime_s=3600)
    with LocalEndpoint(EndpointOptions(oauth=client)) as endpoint:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("DATABRICKS_CLIENT_ID", client.client_id)
            env.setenv("DATABRICKS_CLIENT_SECRET", client.client_secret)
            source = auth.resolve(endpoint.url)
        first = source.current()
        lines: list[str] = []
        watch = Recovery(source, chat_url(endpoint), None, 60, lines.append, Stop())
        # The endpoint forgets the token (revoked): the next probe is refused, and the
        # Authenticator gets a new one, which works.
        endpoint._issuer = type(endpoint._issuer)(client)
        watch.note([{**PUT_OFF, "error_class": "auth"}], files=2)
        watch.ready()
        assert source.current() != first and source.renewals == 1
        assert watch.renewed == 1 and "renewed" in lines[0]
        assert endpoint.stats()["tokens_issued"] == 2

    # A snapshot that is refused cannot be renewed: the run ends, in one line.
    with LocalEndpoint(EndpointOptions(token="the-right-one")) as endpoint:
        watch = Recovery(static(endpoint.url, "a-wrong-one"), chat_url(endpoint), None, 60,
                         lambda _: None, Stop())
        watch.note([{**PUT_OFF, "error_class": "auth"}], files=2)
        with pytest.raises(AuthError) as raised:
            watch.ready()
        message = str(raised.value)
        assert "right after they were refreshed" in message and "HTTP 401" in message
        assert "\n" not in message and "a-wrong-one" not in message


def test_what_can_mint_a_token_never_leaves_the_driver(tmp_path) -> None:
    import pickle

    from pyspark import cloudpickle

    from pipeline.config import RunConfig
    from pipeline.endpoint import auth
    from pipeline.runs.context import context
    from pipeline.runs.udfs import ask_in_tasks

    client = OAuthClient("sp", "sp-secret-that-mints", token_lifetime_s=3600)
    with LocalEndpoint(EndpointOptions(oauth=client)) as endpoint:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("DATABRICKS_CLIENT_ID", client.client_id)
            env.setenv("DATABRICKS_CLIENT_SECRET", client.client_secret)
            source = auth.resolve(endpoint.url)
        with pytest.raises(TypeError, match="never leaves the driver"):
            pickle.dumps(source)
        ctx = context(RunConfig(input=str(tmp_path), endpoint="ep"), source)
        shipped = cloudpickle.dumps(ask_in_tasks(ctx.call_plan()))  # what a UDF carries
        token = source.current().headers.reveal().split("Bearer ", 1)[1]
    assert client.client_secret.encode() not in shipped
    assert token.encode() in shipped  # an access token travels, masked (Secret), as before
    assert token not in repr(ctx) and client.client_secret not in repr(ctx)
