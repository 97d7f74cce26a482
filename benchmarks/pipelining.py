"""Batches that overlap, and what a run costs when there is nothing to do.

Part 1. 2000 photos in batches of 250, an endpoint (its own process) that answers in 250 ms
and admits 16 at once: bound 64 images/s, ideal 2000 / 64 = 31 s. `vision-batch run` runs as
a process, timed by the wall clock (interpreter, JVM start and all), with this checkout and
with a baseline commit (a git worktree, before the batches overlapped). The endpoint says how
fast it answered (first request to last answer) and how long it sat idle in between. Then
the same run in this process, for where each batch's seconds go.
Targets: >= 0.9 of the bound from the first request to the last answer; the whole command
>= 0.6 of the ideal.

Part 2. A rerun of 5000 photos that are all done, against a bare Spark session that starts
and reads the same table once, both as fresh processes. Target: <= 1.5x.

Part 3. Planning with nothing to do, 5,000 and 50,000 files (in this process, warm): it must
not grow faster than the file count.

    python benchmarks/pipelining.py [--baseline REF] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from common import REPO, Endpoint, command, photos, rate

# The last commit before batches overlapped (one batch after another, run.py).
BASELINE = "69c3eed"
IMAGES, BATCH, LATENCY_MS, CAPACITY = 2000, 250, 250, 16


def worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)
    return where


def whole_run(folder: Path, label: str, pythonpath: Path | None = None) -> dict:
    with Endpoint(LATENCY_MS, CAPACITY) as endpoint:
        wall, out = command("run", *endpoint.flags(), "--input", str(folder / "in"), "--table",
                            str(folder / f"out-{label}" / "captions"), "--max-files-per-batch",
                            str(BATCH), "--max-concurrency", str(CAPACITY), cwd=folder,
                            token=endpoint.token, pythonpath=pythonpath)
        stats = endpoint.stats()
    assert f"{IMAGES} ok" in out, out
    images_s, refused = rate(stats)
    return {"wall": wall, "images_s": images_s, "refused": refused, "idle": stats["idle_s"],
            "gaps": stats["idle_gaps_over_1s"],
            "span": stats["last_answer_at"] - stats["first_request_at"]}


def breakdown(folder: Path) -> None:
    """The same run in this process: the timeline of each stage of each batch."""
    from pipeline.config import RunConfig
    from pipeline.endpoint.auth import static
    from pipeline.runs import run

    started = time.time()
    with Endpoint(LATENCY_MS, CAPACITY) as endpoint:
        cfg = RunConfig(input=str(folder / "in"), table=str(folder / "out-inproc" / "captions"),
                        endpoint="bench-vlm", host=endpoint.url, max_concurrency=CAPACITY,
                        max_files_per_batch=BATCH).validate()
        result = run(cfg, static(endpoint.url, endpoint.token), progress=lambda _: None,
                     started=started)
    wall = time.time() - started
    stages = defaultdict(list)
    for batch, stage, began, ended in result.timeline:
        stages[stage].append((batch, began, ended))
    print("  where the seconds went (in this process; s from the start):")
    for stage in ("spark", "tables", "claims table", "listing", "plan"):
        if stage not in stages:
            continue
        (_, began, ended), = stages[stage]
        print(f"    {stage:9s} {began:5.1f} -> {ended:5.1f}  ({ended - began:4.1f} s)")
    for stage in ("prepare", "ask", "commit"):
        spans = [e - b for _, b, e in stages[stage]]
        print(f"    {stage:9s} per batch: median {statistics.median(spans):4.1f} s, "
              f"max {max(spans):4.1f} s, {len(spans)} batches")
    asks = sorted(stages["ask"], key=lambda s: s[1])
    first, last = asks[0][1], max(e for _, _, e in asks)
    print(f"    requests  {first:5.1f} -> {last:5.1f}: before them {first:.1f} s, after them "
          f"{wall - last:.1f} s (the last commit and the runs-table row)")


def noop(folder: Path) -> None:
    with Endpoint(0, 64) as endpoint:  # make 5000 photos done, quickly
        command("run", *endpoint.flags(), "--input", str(folder / "in5k"), "--table",
                str(folder / "done" / "captions"), "--max-concurrency", "64", cwd=folder,
                token=endpoint.token)
        table = folder / "done" / "captions"
        bare = [_bare(table) for _ in range(2)]
        rerun = [command("run", *endpoint.flags(), "--input", str(folder / "in5k"), "--table",
                         str(table), cwd=folder, token=endpoint.token)[0] for _ in range(2)]
    print(f"  bare Spark + Delta start and one read of the table: {min(bare):5.1f} s "
          f"(runs: {', '.join(f'{b:.1f}' for b in bare)})")
    print(f"  no-op rerun of 5000 done photos:                      {min(rerun):5.1f} s "
          f"(runs: {', '.join(f'{r:.1f}' for r in rerun)})")
    print(f"  ratio {min(rerun) / min(bare):.2f}x   (target <= 1.5x)")


def _bare(table: Path) -> float:
    code = ("import sys; from pipeline.spark import get_spark; s = get_spark(); "
            "s.read.format('delta').load(sys.argv[1]).collect()")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(table)], check=True, capture_output=True)
    return time.perf_counter() - started


def planning(folder: Path) -> None:
    """Planning time with everything done, 5,000 vs 50,000 files, in a warm session."""
    from pyspark.sql import functions as F

    from pipeline.config import RunConfig
    from pipeline.files import source
    from pipeline.runs import plan
    from pipeline.runs.context import context
    from pipeline.spark import get_spark
    from pipeline.tables import sink

    spark = get_spark("vision-batch-bench")
    times = {}
    for count in (5_000, 50_000, 5_000, 50_000):  # the second of each counts: a warm JVM
        where = folder / f"plan{count}"
        if not where.exists():
            (where / "in").mkdir(parents=True)
            for i in range(count):
                (where / "in" / f"f{i:06}.jpg").write_bytes(b"x" * (100 + i % 50))
        cfg = RunConfig(input=str(where / "in"), table=str(where / "captions"),
                        endpoint="bench-vlm").validate()
        ctx = context(cfg)
        tables = sink.resolve(spark, cfg.table)
        ctx = replace(ctx, tables=tables)
        if not spark.table(tables.captions).limit(1).count():
            listing = source.list_files(spark, cfg.input).files
            done = listing.select(
                "path", F.col("length").alias("size_bytes"),
                F.col("modificationTime").alias("modified_at"),
                F.lit(ctx.endpoint).alias("endpoint"), F.lit(ctx.prompt_id).alias("prompt_id"),
                F.lit("ok").alias("status"))
            sink.merge_batch(spark, tables, done)
            ctx = replace(ctx, tables=sink.resolve(spark, cfg.table))  # no longer new
        began = time.perf_counter()
        planned = plan.files(spark, ctx, source.list_files(spark, cfg.input))
        times[count] = time.perf_counter() - began
        assert planned.pending == 0 and planned.listed == count
    print(f"  5,000 files {times[5_000]:.2f} s, 50,000 files {times[50_000]:.2f} s: "
          f"{times[50_000] / times[5_000]:.1f}x for 10x the files   (target <= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git ref to compare with")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vb-pipelining-"))
    if 1 in args.parts:
        photos(folder / "in", IMAGES)
    if 2 in args.parts:
        photos(folder / "in5k", 5000)
    bound, ideal = CAPACITY / (LATENCY_MS / 1000), IMAGES / (CAPACITY / (LATENCY_MS / 1000))

    if 1 in args.parts:
        part1(folder, args, bound, ideal)
    if 2 in args.parts:
        print("Part 2: nothing to do")
        noop(folder)
    if 3 in args.parts:
        print("Part 3: planning with nothing to do")
        planning(folder)


def part1(folder: Path, args, bound: float, ideal: float) -> None:
    print(f"Part 1: {IMAGES} photos, batches of {BATCH}, endpoint {LATENCY_MS} ms x "
          f"{CAPACITY}: bound {bound:.0f} images/s, ideal {ideal:.1f} s")
    runs = {"this checkout": whole_run(folder, "now")}
    if not args.skip_baseline:
        base = worktree(args.baseline, folder / "baseline")
        runs[f"baseline {args.baseline}"] = whole_run(folder, "base", pythonpath=base)
    for label, r in runs.items():
        print(f"  {label:18s} requests {r['images_s']:5.1f} images/s = "
              f"{r['images_s'] / bound:4.2f} of bound over {r['span']:5.1f} s, idle "
              f"{r['idle']:5.1f} s ({r['gaps']} gaps of 1 s or more), {r['refused']:.1%} "
              f"turned away; whole command {r['wall']:5.1f} s = {ideal / r['wall']:4.2f} of "
              f"ideal")
    print("  targets: >= 0.90 of bound, whole command >= 0.60 of ideal")
    breakdown(folder)


if __name__ == "__main__":
    main()
