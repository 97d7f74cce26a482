"""Ctrl-C and SIGTERM as users send them: a real `vision-batch run` process, a real signal, the
Delta tables read back. The first signal stops in good order, a second exits at once, and a
rerun finishes the job with one row per file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from pipeline.runs.loop import IN_FLIGHT
from tests import files
from tests.e2e.test_resume import ENDPOINT, launch

# Every test here runs `vision-batch run`, which starts Spark of its own.
pytestmark = pytest.mark.spark

COUNT, BATCH, BUDGET = 36, 6, 3
# A run ended by a second signal leaves its claims to lapse: soon, for the rerun.
ARGS = ("--max-files-per-batch", str(BATCH), "--max-concurrency", str(BUDGET),
        "--lease-seconds", "5")


def photos(folder: Path) -> None:
    files.write_photos(folder, COUNT, "photo {:02}.jpg", lambda i: (30 + i, 20 + i))


def commits(table: Path) -> int:
    """The captions table's latest version (-1 before it exists)."""
    log = table / "_delta_log"
    return max((int(p.stem) for p in log.glob("*.json")), default=-1) if log.exists() else -1


def once_committed(run: subprocess.Popen, table: Path, after: int) -> None:
    """Wait until the table has a version past `after`: a batch of this run is committed."""
    deadline = time.monotonic() + 240
    while commits(table) <= after:
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "no batch was committed"
        time.sleep(0.02)


def stopped(run: subprocess.Popen, *signums: int) -> tuple[float, str, str]:
    """Send the signals (0.2 s apart); the seconds from the last one to the exit, and output."""
    for i, signum in enumerate(signums):
        if i:
            time.sleep(0.2)
        os.kill(run.pid, signum)
        sent = time.monotonic()
    out, err = run.communicate(timeout=120)
    return time.monotonic() - sent, out, err


def one_line(err: str, code_line: str) -> None:
    """The error output: the stop's notices, then one line, and no traceback."""
    assert "Traceback" not in err and "Py4J" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("vision-batch: error:")]
    assert len(lines) == 1 and lines[0].startswith(code_line), err


def test_ctrl_c_saves_what_was_answered_a_second_exits_at_once_and_a_rerun_resumes(
    spark, serve, tmp_path
) -> None:
    interrupted_then_resumed(spark, serve, tmp_path, signal.SIGINT)


def test_sigterm_stops_the_asking_job_of_the_executors_in_good_order(
    spark, serve, tmp_path
) -> None:
    interrupted_then_resumed(spark, serve, tmp_path, signal.SIGTERM, "--caller", "executors",
                             twice=False)


def interrupted_then_resumed(spark, serve, tmp_path, signum: int, *extra: str,
                             session: dict[str, str] | None = None, twice: bool = True) -> None:
    photos(tmp_path / "in")
    table = tmp_path / "out" / "captions"
    endpoint, creds = serve(endpoint_name=ENDPOINT, latency_ms=300, max_concurrency=BUDGET)
    token = creds.headers.reveal().split("Bearer ", 1)[1]
    start = lambda: launch(tmp_path / "in", table, endpoint.url, token, *ARGS, *extra,  # noqa: E731
                           session=session)

    # 1. One signal once the first batch is committed: it ends soon, in good order.
    first = start()
    once_committed(first, table, after=0)  # version 0 creates the table
    seconds, out, err = stopped(first, signum)
    assert first.returncode == 128 + signum, err
    one_line(err, f"vision-batch: error: interrupted by {signal.Signals(signum).name}: run ")
    assert seconds < 30, f"took {seconds:.1f} s to stop"
    rows = spark.read.format("delta").load(str(table))
    saved = rows.count()
    assert BATCH <= saved < COUNT, "the stop did not land mid-way"
    (row,) = spark.read.format("delta").load(f"{table}_runs").collect()
    assert row.status == "interrupted" and row.ended_at is not None
    assert row.exit_code == 128 + signum  # as the command exited
    assert row.error_message == f"interrupted by {signal.Signals(signum).name}"
    # True counts: the run's row says what the table holds for it, and what it paid for.
    assert (row.ok, row.invalid, row.failed) == (saved, 0, 0)
    assert rows.filter(rows.run_id == row.run_id).count() == saved
    assert f"saved {saved} rows ({saved} ok, 0 invalid, 0 failed)" in err
    paid = endpoint.stats()["answered_ok"]
    # What was answered is saved, but for an asking job that outlived the grace (executors)
    # and requests answered as they were cancelled.
    assert saved <= paid <= saved + BATCH + BUDGET

    if twice:
        # 2. Two signals: the second exits at once, whatever the first was waiting for.
        second = start()
        once_committed(second, table, after=commits(table))
        seconds, out, err = stopped(second, signum, signum)
        assert second.returncode == 128 + signum, err
        assert seconds < 5, f"took {seconds:.1f} s to exit after the second signal"
        assert "again: exiting now" in err and "Traceback" not in err

    # 3. A rerun does the rest: one row per file, nothing done twice but what was in flight.
    last = start()
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    rows = spark.read.format("delta").load(str(table))
    assert rows.count() == COUNT == rows.select("path").distinct().count()
    assert {r.status for r in rows.select("status").distinct().collect()} == {"ok"}
    assert endpoint.stats()["answered_ok"] <= COUNT + (2 if twice else 1) * (
        IN_FLIGHT * BATCH + BUDGET)
    statuses = sorted(r.status for r in spark.read.format("delta").load(f"{table}_runs")
                      .collect())
    # The run ended by a second signal is left as a kill -9 leaves one: `running`.
    assert statuses == sorted(["interrupted", "succeeded"] + (["running"] if twice else []))


def left_behind(group: int, within_s: float) -> list[str]:
    """The processes still in a process group once `within_s` has passed (fewer: as soon as
    none is left)."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(process.pid) == group:
                    alive.append(" ".join(process.info["cmdline"] or [])[:120])
            except (ProcessLookupError, psutil.Error):
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_ctrl_c_before_the_first_request_exits_at_once_with_one_line_and_pays_nothing(
    serve, tmp_path
) -> None:
    photos(tmp_path / "in")
    table = tmp_path / "out" / "captions"
    endpoint, creds = serve(endpoint_name=ENDPOINT)
    token = creds.headers.reveal().split("Bearer ", 1)[1]
    run = launch(tmp_path / "in", table, endpoint.url, token)
    try:
        time.sleep(3)  # the command is up; Spark is starting, or the run planning
        seconds, out, err = stopped(run, signal.SIGINT)
        assert run.returncode == 130, err
        assert seconds < 15, f"took {seconds:.1f} s to stop"
        one_line(err, "vision-batch: error: interrupted by SIGINT")
        assert endpoint.stats()["requests"] == 0
        if (table / "_delta_log").exists():  # Spark was up: the run says it was interrupted
            assert "saved 0 rows" in err
        # Its JVM ends with it: a signal during the JVM's launch once left it running.
        assert not left_behind(run.pid, within_s=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
