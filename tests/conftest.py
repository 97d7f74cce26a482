"""Shared fixtures: one local Spark session for the whole run, local endpoints on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import RunConfig
from pipeline.endpoint import auth
from pipeline.local.faults import Faults
from pipeline.local.server import EndpointOptions, LocalEndpoint

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "spark", "e2e", "cluster")  # the folders under tests/, one marker each

# Tests never talk to a real workspace, whatever the developer's shell holds.
for _name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE",
              "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"):
    os.environ.pop(_name, None)
# The shared `spark` session is a classic local one; the Connect tier starts its own server.
os.environ.pop("SPARK_REMOTE", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its tier's marker (the folder it is in: unit, spark, e2e), and
    `spark` too when it needs Spark: a tier of Spark tests, a test that takes the shared
    session or the Connect server, or a module that says so (one that runs the `run`
    command, which starts its own). So `pytest -m "not spark"` runs in seconds."""
    for item in items:
        tier = Path(str(item.path)).parent.name
        if tier in TIERS:
            item.add_marker(tier)
        if tier == "spark" or {"spark", "connect_session"} & set(item.fixturenames):
            item.add_marker("spark")


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
