"""OAuth M2M on the local endpoint, over real HTTP on 127.0.0.1, with the databricks-sdk's own
client-credentials flow (no mocks of either side)."""

from __future__ import annotations

import argparse
import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databricks.sdk.core import Config

from pipeline.local import oauth
from pipeline.local.command import add_arguments, options_from_args, serve
from pipeline.local.oauth import OAuthClient, TokenIssuer
from pipeline.local.server import EndpointOptions, LocalEndpoint

CLIENT_ID = "local-sp-0001"
SECRET = "local-sp-secret-not-real"  # only these in-process servers accept it
CHAT = {"model": "any", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(autouse=True)
def sdk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the explicit host and client may count: no profile, no ambient credentials."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "absent.cfg"))


@pytest.fixture
def endpoint() -> Iterator[LocalEndpoint]:
    """An endpoint that serves OAuth only (no static token), tokens good for an hour."""
    with LocalEndpoint(EndpointOptions(oauth=OAuthClient(CLIENT_ID, SECRET))) as ep:
        yield ep


def sdk(ep: LocalEndpoint, secret: str = SECRET, **kw: Any) -> Config:
    return Config(host=ep.url, client_id=CLIENT_ID, client_secret=secret, **kw)


def chat(ep: LocalEndpoint, headers: dict[str, str]) -> httpx.Response:
    url = f"{ep.url}/serving-endpoints/chat/completions"
    return httpx.post(url, json=CHAT, headers=headers, timeout=10)


def token_request(ep: LocalEndpoint, data: dict[str, str], **kw: Any) -> httpx.Response:
    return httpx.post(f"{ep.url}{oauth.TOKEN}", data=data, timeout=10, **kw)


def test_the_sdk_authenticates_with_oauth_m2m_and_the_endpoint_accepts_it(
    endpoint: LocalEndpoint,
) -> None:
    config = sdk(endpoint)  # no auth_type: the SDK's default chain must pick oauth-m2m
    assert config.auth_type == "oauth-m2m"
    headers = config.authenticate()
    assert headers["Authorization"].startswith("Bearer ")
    answer = chat(endpoint, headers)
    assert answer.status_code == 200, answer.text
    assert httpx.get(f"{endpoint.url}/local/stats", headers=headers).status_code == 200
    # An hour's token is cached: asking again reuses it, the endpoint mints no other.
    assert config.authenticate() == headers
    stats = endpoint.stats()
    assert stats["tokens_issued"] == 1 and stats["answered_ok"] == 1
    assert stats["unauthorized"] == 0
    # With no token at all, still a 401 (OAuth does not open the door).
    assert chat(endpoint, {}).status_code == 401
    assert sdk(endpoint, auth_type="oauth-m2m").authenticate()["Authorization"].startswith(
        "Bearer ")


def test_an_expired_token_is_401_and_the_sdk_fetches_a_fresh_one() -> None:
    client = OAuthClient(CLIENT_ID, SECRET, token_lifetime_s=2)
    with LocalEndpoint(EndpointOptions(oauth=client)) as ep:
        # The endpoint's clock is the test's: a loaded machine cannot let a token expire
        # before the requests that must find it alive are sent.
        now = [0.0]
        ep._issuer = TokenIssuer(client, clock=lambda: now[0])
        config = sdk(ep)
        first = config.authenticate()
        # The SDK refreshes 40 s before expiry, so a 2 s token is stale at once: every
        # authenticate() fetches a new one. Both work while they live.
        second = config.authenticate()
        assert second != first and ep.stats()["tokens_issued"] == 2
        assert chat(ep, first).status_code == 200 and chat(ep, second).status_code == 200
        now[0] += 2.1
        stale = chat(ep, first)
        assert stale.status_code == 401
        assert stale.json()["error_code"] == "UNAUTHENTICATED"
        assert "expired" in stale.json()["message"]
        stats = ep.stats()
        assert stats["unauthorized_expired"] == 1 and stats["unauthorized"] == 1
        assert stats["by_status"] == {"200": 2, "401": 1}
        fresh = config.authenticate()
        assert fresh not in (first, second)
        assert chat(ep, fresh).status_code == 200
        # A token nobody minted is invalid, not expired.
        assert chat(ep, {"Authorization": "Bearer made-up"}).status_code == 401
        stats = ep.stats()
        assert stats["tokens_issued"] == 3
        assert stats["unauthorized"] == 2 and stats["unauthorized_expired"] == 1


def test_a_wrong_secret_makes_the_sdk_raise_invalid_client(endpoint: LocalEndpoint) -> None:
    wrong = "not-the-secret"
    with pytest.raises(ValueError, match="invalid_client") as raised:
        sdk(endpoint, secret=wrong).authenticate()
    assert SECRET not in str(raised.value) and wrong not in str(raised.value)
    stats = endpoint.stats()
    assert stats["invalid_client"] == 1 and stats["unauthorized"] == 1
    assert stats["tokens_issued"] == 0


def test_the_token_endpoint_speaks_oauth(endpoint: LocalEndpoint) -> None:
    # The form-body variant (client_secret_post) works as the Basic header does.
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    answer = token_request(endpoint, form)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == oauth.SCOPE and len(body["access_token"]) >= 40
    assert answer.headers["Cache-Control"] == "no-store"
    assert chat(endpoint, {"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    scoped = token_request(endpoint, {**form, "scope": "serving"})
    assert scoped.json()["scope"] == "serving"

    wrong_id = token_request(endpoint, {**form, "client_id": "someone-else"})
    assert wrong_id.status_code == 401 and wrong_id.json()["error"] == "invalid_client"
    basic = base64.b64encode(f"{CLIENT_ID}:wrong".encode()).decode()
    wrong_basic = token_request(endpoint, {"grant_type": "client_credentials"},
                                headers={"Authorization": f"Basic {basic}"})
    assert wrong_basic.status_code == 401
    assert wrong_basic.headers["WWW-Authenticate"].startswith("Basic")
    nothing = token_request(endpoint, {"grant_type": "client_credentials"})
    assert nothing.status_code == 401 and nothing.json()["error"] == "invalid_client"
    grant = token_request(endpoint, {**form, "grant_type": "password"})
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    as_json = httpx.post(f"{endpoint.url}{oauth.TOKEN}", json=form)
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    stats = endpoint.stats()
    assert stats["tokens_issued"] == 2 and stats["invalid_client"] == 3
    assert stats["unauthorized"] == 3


def test_discovery_is_served_only_with_oauth(endpoint: LocalEndpoint) -> None:
    metadata = httpx.get(f"{endpoint.url}/.well-known/databricks-config").json()
    assert metadata == {"oidc_endpoint": f"{endpoint.url}/oidc"}
    found = httpx.get(f"{endpoint.url}{oauth.DISCOVERY}").json()
    assert found["issuer"] == f"{endpoint.url}/oidc"
    assert found["token_endpoint"] == f"{endpoint.url}{oauth.TOKEN}"
    assert found["authorization_endpoint"] == f"{endpoint.url}{oauth.AUTHORIZE}"
    with LocalEndpoint(EndpointOptions(token="pat-only")) as plain:
        assert httpx.get(f"{plain.url}/.well-known/databricks-config").json() == {}
        assert httpx.get(f"{plain.url}{oauth.DISCOVERY}").status_code == 401
        form = {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                "client_secret": SECRET}
        assert token_request(plain, form).status_code == 401  # no token endpoint: not routed
        # The plain-token case keeps working with the SDK.
        headers = Config(host=plain.url, token="pat-only", auth_type="pat").authenticate()
        assert chat(plain, headers).status_code == 200


def test_the_static_token_and_minted_tokens_both_work_and_stay_apart() -> None:
    options = EndpointOptions(token="a-static-pat", oauth=OAuthClient(CLIENT_ID, SECRET))
    with LocalEndpoint(options) as ep, LocalEndpoint(options) as other:
        assert chat(ep, {"Authorization": "Bearer a-static-pat"}).status_code == 200
        minted = sdk(ep).authenticate()
        assert chat(ep, minted).status_code == 200
        # A token minted by one endpoint means nothing to another with the same client.
        refused = chat(other, minted)
        assert refused.status_code == 401 and "expired" not in refused.json()["message"]
        assert other.stats()["unauthorized_expired"] == 0


def test_tokens_expire_on_the_clock_and_old_ones_are_forgotten() -> None:
    now = [1000.0]
    issuer = TokenIssuer(OAuthClient(CLIENT_ID, SECRET, token_lifetime_s=60), clock=lambda: now[0])
    form = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={SECRET}"

    def mint() -> str:
        answer = issuer.answer("", "application/x-www-form-urlencoded", form.encode())
        assert answer.status == 200 and answer.body["expires_in"] == 60
        return str(answer.body["access_token"])

    token = mint()
    assert issuer.check(token) is None
    now[0] += 59.9
    assert issuer.check(token) is None
    now[0] += 0.1
    assert issuer.check(token) == "expired"
    now[0] += 3600  # an hour past expiry: the next mint forgets it
    assert issuer.check(token) == "expired"
    other = mint()
    assert issuer.check(token) == "invalid" and issuer.check(other) is None
    assert mint() != other


def test_options_are_checked_and_secrets_stay_out_of_reprs() -> None:
    with pytest.raises(ValueError, match="--token-lifetime-seconds"):
        OAuthClient(CLIENT_ID, SECRET, token_lifetime_s=0)
    with pytest.raises(ValueError, match="--token-lifetime-seconds"):
        OAuthClient(CLIENT_ID, SECRET, token_lifetime_s=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client secret"):
        OAuthClient(CLIENT_ID, "")
    with pytest.raises(ValueError, match="token or an OAuth client"):
        EndpointOptions()
    with pytest.raises(ValueError, match="non-empty token"):
        EndpointOptions(token="", oauth=OAuthClient(CLIENT_ID, SECRET))
    options = EndpointOptions(token="a-static-pat", oauth=OAuthClient(CLIENT_ID, SECRET))
    assert SECRET not in repr(options) and "a-static-pat" not in repr(options)
    assert CLIENT_ID in repr(options)  # an id is not a secret, and says which client


def test_serve_local_takes_the_client_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert serve(parser.parse_args([])) == 2  # no secret in the environment at all
    err = capsys.readouterr().err
    assert "DATABRICKS_TOKEN" in err and "DATABRICKS_CLIENT_SECRET" in err
    # Half an OAuth client is refused, even with a static token that would do on its own.
    monkeypatch.setenv("DATABRICKS_TOKEN", "a-static-pat")
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    assert serve(parser.parse_args([])) == 2
    assert "Set both DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET" in capsys.readouterr().err
    monkeypatch.delenv("DATABRICKS_CLIENT_ID")
    # A lifetime with no OAuth client would do nothing: refused, naming the flag.
    assert serve(parser.parse_args(["--token-lifetime-seconds", "60"])) == 2
    err = capsys.readouterr().err
    assert "--token-lifetime-seconds" in err and "a-static-pat" not in err
    options = options_from_args(parser.parse_args(["--token-lifetime-seconds", "90"]), None,
                                (CLIENT_ID, SECRET))
    assert options.token is None and options.oauth == OAuthClient(CLIENT_ID, SECRET, 90)
    assert options_from_args(parser.parse_args([]), None, (CLIENT_ID, SECRET)).oauth == \
        OAuthClient(CLIENT_ID, SECRET, 3600)
    with pytest.raises(ValueError, match="--token-lifetime-seconds"):
        options_from_args(parser.parse_args(["--token-lifetime-seconds", "0"]), None,
                          (CLIENT_ID, SECRET))
