"""The command line as users run it: a real subprocess, the embedded endpoint, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}


def vision_batch(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout,
    )


def read_table(spark, path: Path) -> list[dict]:
    return [r.asDict() for r in spark.read.format("delta").load(str(path)).collect()]


def test_no_arguments_captions_the_sample_photos_with_the_embedded_endpoint(spark, tmp_path):
    done = vision_batch("run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "local reference model" in done.stdout
    assert "12 listed, 0 already done, 12 ok, 0 invalid, 0 failed" in done.stdout
    # Progress as it goes: the plan, then each batch with its counts and speed so far.
    assert "12 files listed, 0 already done, 12 to process in 1 batch(es)" in done.stdout
    assert "batch 1/1: 12/12 files, 12 ok, 0 invalid, 0 failed; " in done.stdout
    assert "images/s" in done.stdout
    rows = read_table(spark, tmp_path / "output" / "captions")
    assert len(rows) == 12
    assert all(r["status"] == "ok" and "local reference model" in r["caption"] for r in rows)
    assert (tmp_path / "output" / "captions_runs" / "_delta_log").is_dir()
