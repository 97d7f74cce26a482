"""Planning at a hundred million files, simulated on 2 cores: the planner is fed a listing of
N synthetic files (path, length, modificationTime), 99% of them already done in a real Delta
captions table, and cut into batches of 1000. Run for 1 and 10 million files.

What it shows, per N: the planning time (the count, then every batch of metadata streamed to
this process), the driver's peak memory (this Python process, and the JVM, which in local
mode is driver and executor at once, run with a 2 GB heap), the largest batch held, and the
task counts of the plan's Spark stages: every stage that reads the listing or the table runs
in several tasks; the only single-task stages are the per-batch fetches, one range
partition each.
Targets: 10 million entries finish with the heap under 2 GB (-Xmx2g: over it, the JVM
fails), and the time grows no faster than the entries.

    python benchmarks/planning_scale.py [--millions 1 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil

BATCH = 1000


def java_peak(stop: threading.Event, peak: list[int]) -> None:
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                if "java" in child.name():
                    peak[0] = max(peak[0], child.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--millions", type=float, nargs="+", default=[1, 10])
    args = parser.parse_args()
    os.environ["VISION_BATCH_DRIVER_MEMORY"] = "2g"

    from pyspark.sql import functions as F

    from pipeline.config import RunConfig
    from pipeline.files.source import Listing
    from pipeline.runs import plan
    from pipeline.runs.context import context
    from pipeline.spark import get_spark
    from pipeline.tables import sink

    spark = get_spark("vision-batch-planning")
    sc = spark.sparkContext  # a benchmark may look inside the JVM: stage task counts
    folder = Path(tempfile.mkdtemp(prefix="vb-planning-"))
    peak = [0]
    stop = threading.Event()
    threading.Thread(target=java_peak, args=(stop, peak), daemon=True).start()
    times = {}
    for millions in args.millions:
        n = int(millions * 1_000_000)
        where = folder / f"n{n}"
        cfg = RunConfig(input="/photos", table=str(where / "captions"), endpoint="bench-vlm",
                        max_files_per_batch=BATCH).validate()
        ctx = context(cfg)
        tables = sink.resolve(spark, cfg.table)
        ctx = replace(ctx, tables=tables)
        files_of = [
            F.format_string("file:/photos/%03d/%09d.jpg", F.col("id") % 1000, "id")
            .alias("path"),
            (1000 + F.col("id") % 5000).alias("length"),
            F.timestamp_seconds(F.lit(1_700_000_000) + F.col("id")).alias("modificationTime")]
        listed = spark.range(0, n).select(*files_of)
        began = time.perf_counter()
        done = spark.range(0, n).filter(F.col("id") % 100 != 0).select(*files_of)
        rows = done.select(
            "path", F.col("length").alias("size_bytes"),
            F.col("modificationTime").alias("modified_at"),
            F.lit(ctx.endpoint).alias("endpoint"), F.lit(ctx.prompt_id).alias("prompt_id"),
            F.lit("ok").alias("status"))
        # Setup, not what is measured: a plain append of the done rows.
        schema = spark.table(tables.captions).schema
        rows.select(*[(F.col(f.name) if f.name in rows.columns else F.lit(None))
                      .cast(f.dataType).alias(f.name) for f in schema]) \
            .write.format("delta").mode("append").saveAsTable(tables.captions)
        ctx = replace(ctx, tables=sink.resolve(spark, cfg.table))  # holds rows now
        written = time.perf_counter() - began
        group = f"plan-{n}"
        sc.setJobGroup(group, f"planning {n} files")
        began = time.perf_counter()
        planned = plan.files(spark, ctx, Listing(listed))
        counted = time.perf_counter() - began
        batches, files, largest = 0, 0, 0
        for batch in planned.stream:
            batches += 1
            files += len(batch.entries)
            largest = max(largest, len(batch.entries))
        times[n] = time.perf_counter() - began
        sc.setJobGroup("other", "")
        tracker = sc.statusTracker()
        tasks = []
        for job in tracker.getJobIdsForGroup(group):
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info else []:
                stage_info = tracker.getStageInfo(stage)
                if stage_info is not None:
                    tasks.append(stage_info.numTasks)
        single = sum(t == 1 for t in tasks)
        print(f"{n:>12,} files ({n // 100:,} to do), table written in {written:.0f} s:")
        print(f"    planned in {times[n]:.1f} s (the count {counted:.1f} s, then {batches} "
              f"batches streamed, {files:,} files, the largest {largest})")
        print(f"    stages: {len(tasks)}; tasks per stage {sorted(set(tasks))}; single-task "
              f"stages {single} (the per-batch fetches: {planned.batches} batches in "
              f"{min(plan.MAX_STREAM_PARTITIONS, planned.batches)} range partitions)")
        python_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"    peak memory so far: this process {python_mb:.0f} MB, the JVM "
              f"{peak[0] / 2**20:.0f} MB (heap at most 2 GB)")
        assert files == planned.pending == n // 100, (files, planned.pending)
        shutil.rmtree(where, ignore_errors=True)
    stop.set()
    if len(times) > 1:
        small, large = min(times), max(times)
        print(f"{large / small:.0f}x the entries took {times[large] / times[small]:.1f}x the "
              "time")


if __name__ == "__main__":
    main()
