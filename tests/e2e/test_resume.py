"""Exactly-once across crashes and overlapping schedules: real processes, SIGKILL, Delta."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.runs.loop import IN_FLIGHT
from tests import files

ENDPOINT = "resume-vlm"


def launch(folder: Path, table: Path, url: str, token: str, *extra: str,
           session: dict[str, str] | None = None) -> subprocess.Popen:
    """`vision-batch run` as a process of its own; `session` adds the environment of a Spark
    Connect session (SPARK_REMOTE and its token) to run there instead of a local JVM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(session or {})
    env["DATABRICKS_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--host", url, "--endpoint", ENDPOINT,
         "--input", str(folder), "--table", str(table), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: the JVM dies with it
    )


def test_a_run_killed_mid_way_resumes_without_losing_or_duplicating(
    spark, serve, tmp_path
) -> None:
    killed_and_resumed(spark, serve, tmp_path)


def killed_and_resumed(spark, serve, tmp_path, session: dict[str, str] | None = None) -> None:
    """kill -9 a run mid-way, run again: one row per file, every file done, and no more
    answers paid twice than the batches in flight allow."""
    count, batch, budget = 36, 6, 3
    files.write_photos(tmp_path / "in", count, "photo {:02}.jpg", lambda i: (30 + i, 20 + i))
    broken = {"truncated download.jpg": ("invalid", "corrupt_image"),
              "notes.jpg": ("invalid", "not_an_image"),
              "vector.svg": ("invalid", "unsupported_format"),
              "empty.jpg": ("invalid", "empty_file")}
    (tmp_path / "in" / "truncated download.jpg").write_bytes(files.truncated_jpeg())
    (tmp_path / "in" / "notes.jpg").write_bytes(b"meeting notes, not a picture")
    (tmp_path / "in" / "vector.svg").write_bytes(files.svg())
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    table = tmp_path / "out" / "captions"
    endpoint, creds = serve(endpoint_name=ENDPOINT, latency_ms=150, max_concurrency=budget)
    token = creds.headers.reveal().split("Bearer ", 1)[1]
    args = ("--max-files-per-batch", str(batch), "--max-concurrency", str(budget))

    first = launch(tmp_path / "in", table, endpoint.url, token, *args, session=session)
    # Killed once its first batch is committed (the table's first commit after its
    # creation), while the next batches are being asked.
    committed = table / "_delta_log" / f"{1:020d}.json"
    deadline = time.monotonic() + 240
    while not committed.exists() and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    killed_after = endpoint.stats()["answered_ok"]
    assert batch <= killed_after < count, "the kill did not land mid-way"
    assert first.returncode == -signal.SIGKILL

    second = launch(tmp_path / "in", table, endpoint.url, token, *args, session=session)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err

    assert "0 failed" in out
    rows = spark.read.format("delta").load(str(table))
    total = count + len(broken)
    assert rows.count() == total == rows.select("path").distinct().count()
    outcome = {r.path.rsplit("/", 1)[-1]: (r.status, r.error_class) for r in rows.collect()}
    assert {n: outcome[n] for n in broken} == broken
    assert sum(status == "ok" for status, _ in outcome.values()) == count
    answered = endpoint.stats()["answered_ok"]
    # At most: every file once, plus the batches in flight at the kill (asked, not yet
    # committed) and the open requests.
    assert answered <= count + IN_FLIGHT * batch + budget
    print(f"rework: {answered} requests answered for {count} files = {answered / count:.2f}")

    runs = {r.status: r for r in spark.read.format("delta").load(f"{table}_runs").collect()}
    assert set(runs) == {"running", "succeeded"}  # the killed run never finished
    assert runs["running"].ended_at is None
    assert runs["succeeded"].skipped >= batch  # the merged batches were not redone
    assert endpoint.stats()["rejected_400"] == 0


def test_two_overlapping_runs_leave_one_row_per_file(spark, serve, tmp_path) -> None:
    count = 8
    files.write_photos(tmp_path / "in", count, "photo {:02}.jpg", lambda i: (30 + i, 20 + i))
    table = tmp_path / "out" / "captions"
    endpoint, creds = serve(endpoint_name=ENDPOINT, latency_ms=50)
    token = creds.headers.reveal().split("Bearer ", 1)[1]
    args = ("--max-files-per-batch", "4")
    runs = [launch(tmp_path / "in", table, endpoint.url, token, *args) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=400)
        assert run.returncode == 0, err

    rows = spark.read.format("delta").load(str(table))
    assert rows.count() == count == rows.select("path").distinct().count()
    assert {r.status for r in rows.select("status").distinct().collect()} == {"ok"}
    history = spark.read.format("delta").load(f"{table}_runs").collect()
    assert sorted(r.status for r in history) == ["succeeded", "succeeded"]
