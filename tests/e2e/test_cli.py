"""The command line as users run it: a real subprocess, the embedded endpoint, real files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
JOB = Path(__file__).resolve().parents[2] / "jobs" / "caption_images.py"


def read_table(spark, path: Path) -> list[dict]:
    return [r.asDict() for r in spark.read.format("delta").load(str(path)).collect()]


def test_no_arguments_captions_the_sample_photos_with_the_embedded_endpoint(spark, tmp_path):
    # Run as the bundle's job task runs it: jobs/caption_images.py with the optional settings
    # left unset arriving as empty flags, which leaves `vision-batch run` with no arguments.
    # On a machine set up for Databricks, as most of its users' are: a [DEFAULT] profile in
    # ~/.databrickscfg and DATABRICKS_HOST, both naming a workspace nothing answers for. With
    # no --endpoint, neither is used (nor even looked up: the SDK would try it for 15 s).
    home = tmp_path / "home"
    home.mkdir()
    (home / ".databrickscfg").write_text("[DEFAULT]\nhost = http://127.0.0.1:9\n"
                                         "token = dapi-not-a-real-token\n")
    env = {**ENV, "HOME": str(home), "DATABRICKS_HOST": "http://127.0.0.1:7"}
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(JOB), "--max-rpm=", "--host=", "--secret-scope=", "--secret-key="],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    wall = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"No --endpoint given: using the local reference model at "
                        r"http://127\.0\.0\.1:\d+ \(a configured workspace is used only with "
                        r"--endpoint\)", done.stdout.splitlines()[0]), done.stdout
    assert "12 listed, 0 already done, 12 ok, 0 invalid, 0 failed" in done.stdout
    # Progress as it goes: the plan, then each batch with its counts and speed so far.
    assert "12 files listed, 0 already done, 12 to process in 1 batch(es)" in done.stdout
    assert "batch 1/1: 12/12 files, 12 ok, 0 invalid, 0 failed; " in done.stdout
    assert "images/s" in done.stdout
    rows = read_table(spark, tmp_path / "output" / "captions")
    assert len(rows) == 12
    assert all(r["status"] == "ok" and "local reference model" in r["caption"] for r in rows)
    assert (tmp_path / "output" / "captions_runs" / "_delta_log").is_dir()

    # Honest times: the summary's duration is the runs table's, counted from the start of the
    # command; the rest of the wall clock is the interpreter starting and the JVM stopping.
    said = re.search(r"succeeded in ([\d.]+) s \(of which ([\d.]+) s starting Spark\)",
                     done.stdout)
    assert said, done.stdout
    seconds, spark_start = float(said.group(1)), float(said.group(2))
    (run,) = read_table(spark, tmp_path / "output" / "captions_runs")
    assert run["exit_code"] == 0
    # The prompt id `compare --pair` names, just before the table.
    assert f"\n  prompt  {rows[0]['prompt_id']}\n  table   " in done.stdout
    recorded = (run["ended_at"] - run["started_at"]).total_seconds()
    assert abs(recorded - seconds) < 0.06
    assert 0 < spark_start < seconds < wall < seconds + 10
