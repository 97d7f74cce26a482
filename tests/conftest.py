"""Shared fixtures: one local Spark session for the whole run, local endpoints on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import auth
from pipeline.config import RunConfig
from pipeline.local_endpoint import EndpointOptions, Faults, LocalEndpoint

REPO = Path(__file__).resolve().parents[1]

# Tests never talk to a real workspace, whatever the developer's shell holds.
for _name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
    os.environ.pop(_name, None)
# The shared `spark` session is a classic local one; the Connect tier starts its own server.
os.environ.pop("SPARK_REMOTE", None)


@pytest.fixture(scope="session")
def connect_session() -> Iterator[dict[str, str]]:
    """One Spark Connect server for the whole test run, in its own process (as serverless
    compute or a shared cluster is): the environment that points `vision-batch` at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "SPARK_REMOTE"}
    env["SPARK_CONNECT_AUTHENTICATE_TOKEN"] = token
    server = subprocess.Popen([sys.executable, "-m", "tests.connect_server", str(port)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        ready = server.stdout.readline() if server.stdout else ""
        assert ready.strip() == "ready", f"the Spark Connect server did not start: {ready!r}"
        yield {"SPARK_REMOTE": f"sc://localhost:{port}", "SPARK_CONNECT_AUTHENTICATE_TOKEN": token}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def spark():
    from pipeline.spark import get_spark

    session = get_spark("vision-batch-tests")
    yield session
    session.stop()


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[LocalEndpoint, auth.Credentials]]]:
    """Start local endpoints with given options; each stops at the end of the test."""
    started: list[LocalEndpoint] = []

    def start(faults: Faults | None = None, **options: Any):
        token = secrets.token_urlsafe(16)
        endpoint = LocalEndpoint(
            EndpointOptions(token=token, faults=faults or Faults(), **options)
        ).start()
        started.append(endpoint)
        return endpoint, auth.static(endpoint.url, token)

    yield start
    for endpoint in started:
        endpoint.stop()


@pytest.fixture
def run_config(tmp_path: Path) -> Callable[..., RunConfig]:
    """A RunConfig for a local run writing under tmp_path, with small fast defaults."""

    def make(input_dir: Path, **overrides: Any) -> RunConfig:
        base = RunConfig(
            input=str(input_dir),
            table=str(tmp_path / "tables" / "captions"),
            endpoint="local-reference",
            max_concurrency=4,
            request_timeout=10.0,
            max_attempts=3,
        )
        return replace(base, **overrides).validate()

    return make
