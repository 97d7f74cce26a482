"""The e2e tier: the CLI as users run it, real HTTP, real processes. Its own fixture: one
Spark Connect server for the tests that run on Connect (test_connect.py)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import REPO


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
