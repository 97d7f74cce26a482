"""The core runs again on Spark Connect: what serverless compute, standard-access clusters and
Databricks Connect are. One Spark Connect server serves the whole tier (conftest.py's
`connect_session`), in a process of its own; `vision-batch` runs as users run it, a process
with SPARK_REMOTE set, and the tables it writes are read back with the classic session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests import files
from tests.e2e.test_report import browser_or_skip, check_page
from tests.e2e.test_resume import killed_and_resumed

pytestmark = pytest.mark.connect
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "SPARK_REMOTE"))}


def vision_batch(session: dict[str, str], *args: str, cwd: Path, token: str | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**ENV, **session}
    if token:
        env["DATABRICKS_TOKEN"] = token
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done


def rows_by_name(spark, table: Path) -> dict[str, dict]:
    return {r["path"].rsplit("/", 1)[-1]: r.asDict()
            for r in spark.read.format("delta").load(str(table)).collect()}


def served(serve, **options):
    endpoint, credentials = serve(endpoint_name="connect-vlm", **options)
    token = credentials.headers.reveal().split("Bearer ", 1)[1]
    return endpoint, ["--host", endpoint.url, "--endpoint", "connect-vlm"], token


def test_the_demo_and_estimate_run_on_connect(spark, connect_session, tmp_path) -> None:
    done = vision_batch(connect_session, "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "12 listed, 0 already done, 12 ok, 0 invalid, 0 failed" in done.stdout
    assert "batch 1/1: 12/12 files, 12 ok" in done.stdout
    rows = rows_by_name(spark, tmp_path / "output" / "captions")
    assert len(rows) == 12 and {r["status"] for r in rows.values()} == {"ok"}
    assert all("local reference model" in r["caption"] for r in rows.values())

    estimated = vision_batch(connect_session, "estimate", cwd=tmp_path)
    assert estimated.returncode == 0, estimated.stderr
    said = dict(line.split("  ", 1) for line in estimated.stdout.splitlines() if "  " in line)
    assert said["files listed"].strip() == "12" and said["already done"].strip() == "12"

    again = vision_batch(connect_session, "run", cwd=tmp_path)
    assert again.returncode == 0 and "12 listed, 12 already done, 0 ok" in again.stdout


def test_every_hostile_file_gets_its_row_on_connect(spark, serve, connect_session,
                                                    tmp_path) -> None:
    cases = files.write_folder(tmp_path / "in", files.hostile_cases())
    endpoint, flags, token = served(serve)
    table = tmp_path / "out" / "captions"
    done = vision_batch(connect_session, "run", *flags, "--input", str(tmp_path / "in"),
                        "--table", str(table), cwd=tmp_path, token=token)
    assert done.returncode == 0, done.stderr
    rows = rows_by_name(spark, table)
    assert set(rows) == set(cases)
    for name, case in cases.items():
        assert (rows[name]["status"], rows[name]["error_class"]) == (case.status,
                                                                      case.error_class), name
    ok = [c for c in cases.values() if c.status == "ok"]
    assert endpoint.stats()["requests"] == len(ok) and endpoint.stats()["rejected_400"] == 0


def test_a_run_killed_on_connect_resumes_without_losing_or_duplicating(
    spark, serve, connect_session, tmp_path
) -> None:
    killed_and_resumed(spark, serve, tmp_path, session=connect_session)


def test_packs_from_the_executors_and_groups_from_the_driver_on_connect(
    spark, serve, connect_session, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 11, "p{:02d}.jpg", lambda i: (60 + 3 * i, 40))
    endpoint, flags, token = served(serve)
    packed = tmp_path / "packed" / "captions"
    done = vision_batch(connect_session, "run", *flags, "--input", str(folder), "--table",
                        str(packed), "--images-per-request", "5", "--caller", "executors",
                        cwd=tmp_path, token=token)
    assert done.returncode == 0, done.stderr
    rows = rows_by_name(spark, packed)
    assert all(f"{60 + 3 * i}x40 pixels" in rows[f"p{i:02d}.jpg"]["caption"] for i in range(11))
    assert 3 <= endpoint.stats()["requests"] <= 6

    products = tmp_path / "products"
    for n, count in enumerate((3, 7)):  # 7: past the 5 images one request may carry
        files.write_photos(products / f"sku-{n}", count, "view{}.jpg",
                           lambda i, n=n: (50 + 10 * n + i, 30 + n))
    grouped = tmp_path / "grouped" / "captions"
    before = endpoint.stats()["requests"]
    done = vision_batch(connect_session, "run", *flags, "--input", str(products), "--table",
                        str(grouped), "--group-by", "folder", "--caller", "driver",
                        cwd=tmp_path, token=token)
    assert done.returncode == 0, done.stderr
    answers = {r.group_key.rsplit("/", 1)[-1]: r for r in
               spark.read.format("delta").load(f"{grouped}_groups").collect()}
    assert {k: (r.status, r.parts, r.images) for k, r in answers.items()} == {
        "sku-0": ("ok", 1, 3), "sku-1": ("ok", 2, 7)}
    assert endpoint.stats()["requests"] - before == 3
    assert spark.read.format("delta").load(str(grouped)).count() == 10  # a row per file


def test_the_sql_path_runs_its_template_on_connect(spark, serve, connect_session,
                                                   tmp_path) -> None:
    folder = files.write_photos(tmp_path / "in", 3, "img{}.jpg", lambda i: (40 + i, 30))
    (folder / "notes.txt").write_bytes(b"not an image")
    endpoint, flags, token = served(serve)
    table = tmp_path / "out" / "captions"
    done = vision_batch(connect_session, "run", *flags, "--input", str(folder), "--table",
                        str(table), "--mode", "sql", cwd=tmp_path, token=token)
    assert done.returncode == 0, done.stderr
    rows = rows_by_name(spark, table)
    assert Counter(r["status"] for r in rows.values()) == {"ok": 3, "invalid": 1}
    assert rows["img0.jpg"]["usage_source"] == "estimated"
    assert endpoint.stats()["requests"] == 3


def test_the_report_of_a_connect_run_opens_in_the_browser(spark, serve, connect_session,
                                                          tmp_path) -> None:
    from pipeline.local.faults import Faults

    driver = browser_or_skip(tmp_path)
    try:
        folder = files.write_photos(tmp_path / "in", 6, "photo {}.jpg",
                                    lambda i: (48 + 16 * i, 40 + 4 * i))
        (folder / "notes.jpg").write_bytes(b"meeting notes, not a picture\n")
        _, flags, token = served(serve, faults=Faults(rate_500=0.5, seed=7))
        table = tmp_path / "out" / "captions"
        done = vision_batch(connect_session, "run", *flags, "--input", str(folder),
                            "--table", str(table), "--max-attempts", "1", cwd=tmp_path,
                            token=token)
        # Half the photos failed, past the default --max-failed-share of 5%: the run
        # finished and kept its answers, its summary printed, and it exits 3 with one line
        # (the invalid file counts in neither side of the share).
        [record] = spark.read.format("delta").load(f"{table}_runs").collect()
        assert done.returncode == 3, done.stderr
        assert (record.status, record.exit_code, record.ok + record.failed) == (
            "succeeded", 3, 6)
        assert done.stderr.splitlines()[-1] == (
            f"vision-batch: error: {record.failed} of 6 rows failed in run {record.run_id} "
            f"({100 * record.failed / 6:.1f}%, over --max-failed-share 5%): server_error "
            f"{record.failed}")
        assert f"run {record.run_id}: finished, too many rows failed, in" in done.stdout
        out = tmp_path / "report.html"
        made = vision_batch(connect_session, "report", "--table", str(table), "--out",
                            str(out), cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        assert "all 7 rows shown" in made.stdout
        rows = {r["path"]: r.asDict() for r in
                spark.read.format("delta").load(str(table)).collect()}
        assert Counter(r["status"] for r in rows.values())["failed"] >= 1
        check_page(driver, out, rows)
    finally:
        driver.quit()


def test_ctrl_c_on_connect_saves_what_was_answered_and_a_rerun_resumes(
    spark, serve, connect_session, tmp_path
) -> None:
    from tests.e2e.test_interrupts import interrupted_then_resumed

    interrupted_then_resumed(spark, serve, tmp_path, signal.SIGINT, session=connect_session,
                             twice=False)
