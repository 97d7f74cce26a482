"""A run that lasts: credentials that expire and an endpoint that goes down, with hours made
minutes (tokens that live 60 s, an outage of 90 s), for both callers at once, as processes.

#25: with tokens of a minute, a run resolved its credentials once and 474 of 900 rows failed
on 401 (executors caller), 442 of 900 (driver caller); a 90 s outage turned 375 of 600 rows
into `failed` and sent 1,928 requests into it. Now the driver asks the SDK for fresh headers
(executors get them per asking job), and an outage is waited out with a few probes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.local.oauth import OAuthClient
from pipeline.local.server import EndpointOptions, LocalEndpoint
from pipeline.spark import spark_log_path
from tests import files

pytestmark = pytest.mark.spark  # each run starts Spark of its own

ENDPOINT = "long-vlm"
CALLERS = ("driver", "executors")


def launch(folder: Path, table: Path, url: str, client: OAuthClient, caller: str,
           *extra: str) -> subprocess.Popen:
    """`vision-batch run` as a service principal would run it: OAuth M2M from the
    environment (DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET), no token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(DATABRICKS_CLIENT_ID=client.client_id,
               DATABRICKS_CLIENT_SECRET=client.client_secret)
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--host", url, "--endpoint", ENDPOINT,
         "--input", str(folder), "--table", str(table), "--caller", caller, *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


@pytest.mark.timeout(900)  # two runs of about three minutes each, side by side
def test_a_long_run_outlives_its_tokens_and_waits_out_an_outage_with_either_caller(
    spark, tmp_path
) -> None:
    client = OAuthClient("vision-batch-sp", secrets.token_urlsafe(24), token_lifetime_s=60)
    endpoint = LocalEndpoint(EndpointOptions(
        token=None, oauth=client, endpoint_name=ENDPOINT, latency_ms=500)).start()
    count = 240  # per run: about 30 s of asking at 4 in flight and 0.5 s an answer
    runs = {}
    try:
        for caller in CALLERS:
            folder = files.write_photos(tmp_path / caller / "in", count, "p{:03}.jpg",
                                        lambda i, c=caller: (30 + i % 50,
                                                             20 + i // 50 + 10 * len(c)))
            runs[caller] = launch(folder, tmp_path / caller / "captions", endpoint.url, client,
                                  caller, "--max-concurrency", "4", "--max-files-per-batch",
                                  "40")
        # The outage: once both runs are well under way (and their first tokens have been
        # renewed), the endpoint fails every chat request for 90 s.
        deadline = time.monotonic() + 240
        while endpoint.stats()["answered_ok"] < 0.8 * count and time.monotonic() < deadline:
            assert all(run.poll() is None for run in runs.values())
            time.sleep(0.2)
        endpoint.start_outage(90)
        began = time.monotonic()
        said = {caller: run.communicate(timeout=600) for caller, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
        endpoint.stop()
    stats = endpoint.stats()
    assert time.monotonic() - began >= 90

    for caller, (out, err) in said.items():
        print(f"--caller {caller}:\n{out}{err[-3000:]}")  # the whole story, should one fail
    print({k: v for k, v in stats.items() if k.startswith(("tokens", "unauthorized", "outage",
                                                           "answered"))})
    for caller, (out, err) in said.items():
        assert runs[caller].returncode == 0, (caller, err)
        assert f"{count} ok, 0 invalid, 0 failed" in out, (caller, out)
        assert "endpoint down since" in out and "endpoint back after" in out, (caller, out)
        rows = spark.read.format("delta").load(str(tmp_path / caller / "captions"))
        assert rows.count() == count == rows.filter("status = 'ok'").count()
        [record] = spark.read.format("delta").load(
            str(tmp_path / caller / "captions_runs")).collect()
        assert record.status == "succeeded" and record.outage_s >= 60 and record.put_off > 0
        assert record.requests == record.ok  # what it paid for, no more
        texts = [out, err, rows.toPandas().to_json(), record.config_json]
        assert all(client.client_secret not in text for text in texts)

    # Tokens were renewed throughout (a 60 s token is renewed by the SDK 40 s before it
    # expires), and no request was turned away for an expired one more than the SDK's
    # renewals allow; every file was answered once.
    assert stats["tokens_issued"] >= 2 * 4
    # Each run's last probe, the one the endpoint answered, is paid too (a tiny request).
    assert stats["answered_ok"] == 2 * count + 2
    # What the outage cost the endpoint: the requests in flight when it began, those that
    # met it before each client stopped sending (breaker.OPEN_AFTER), then a few probes
    # (at most one every 15 s): a few dozen, against 1,928 before.
    assert stats["outage_refused"] <= 2 * 30, stats
    log = Path(spark_log_path()).parent
    for jvm_log in log.glob("vision-batch-spark-*.log"):
        assert client.client_secret not in jvm_log.read_text(errors="replace")
