"""A long run stays flat: does the 200th batch cost what the 20th did?

20,000 small generated photos, `vision-batch run` as users run it (a process of its own;
the local endpoint in another), in batches of 100: 200 batches into a new table, each
MERGEd, its claims written and read, its lease renewed, the tables auto-compacted. The
endpoint answers in 100 ms and admits 64 at once (a batch's requests take about 0.2 s), so a
batch's seconds are the Spark work around it: what would grow with the table.

Printed: the seconds per batch in each tenth of the batches (from the run's own batch lines:
the first tenth from batch 1's line to batch 20's, each later one from the line that ended
the tenth before), the last tenth over the first (target <= 1.2); the command's process tree
(the Python driver and the JVM, which in local mode is driver and executor at once): RSS at
the end of the first tenth and at the last batch, the JVM's heap in use after a full GC at
the end of the first and of the ninth tenth (`jcmd`); each table's files at the end (live in
the Delta log, and Parquet files on disk), its commits and whether the log is checkpointed
(`_last_checkpoint`); and whether the JVM's output (`vision-batch-spark-<pid>.log` in the
temp folder) says `CodeCache is full`.

`--baseline REF` runs the same command with the code of REF (a git worktree) on the same
photos after this checkout's run, and prints both side by side.

    python benchmarks/long_run.py [--files 20000] [--batch 100] [--baseline REF]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import REPO, Endpoint, photos

LATENCY_MS, CAPACITY = 100, 64
BATCH_LINE = re.compile(r"^batch (\d+)/~?(\d+): .* images/s since the start, ([\d.]+) s")
TARGET = 1.2


def worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)
    return where


class Tree:
    """The command's processes: the Python driver (the command itself) and the JVM."""

    def __init__(self, pid: int) -> None:
        self.driver = psutil.Process(pid)

    def jvm(self) -> psutil.Process | None:
        try:
            for child in self.driver.children(recursive=True):
                if "java" in child.name():
                    return child
        except psutil.Error:
            pass
        return None

    def rss_mb(self) -> tuple[float, float]:
        """(Python driver, JVM) resident MB now; 0 for one that is gone."""
        def rss(proc: psutil.Process | None) -> float:
            try:
                return proc.memory_info().rss / 2**20 if proc is not None else 0.0
            except psutil.Error:
                return 0.0
        return rss(self.driver), rss(self.jvm())

    def heap_after_gc_mb(self) -> float | None:
        """The JVM's heap in use right after a full GC (jcmd), None if it cannot be asked."""
        jvm = self.jvm()
        if jvm is None:
            return None
        try:
            subprocess.run(["jcmd", str(jvm.pid), "GC.run"], capture_output=True, timeout=60,
                           check=True)
            info = subprocess.run(["jcmd", str(jvm.pid), "GC.heap_info"], capture_output=True,
                                  text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        used = re.search(r"total \d+K, used (\d+)K", info)
        return int(used.group(1)) / 1024 if used else None


def run(folder: Path, label: str, files: int, batch: int,
        pythonpath: Path | None = None) -> dict:
    """One `vision-batch run` over folder/in into a new table; what it printed, when."""
    table = folder / f"out-{label}" / "captions"
    with Endpoint(LATENCY_MS, CAPACITY) as endpoint:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABRICKS_", "SPARK_REMOTE"))}
        env["DATABRICKS_TOKEN"] = endpoint.token
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        args = [sys.executable, "-m", "pipeline.cli", "run", *endpoint.flags(), "--input",
                str(folder / "in"), "--table", str(table), "--max-files-per-batch", str(batch),
                "--max-concurrency", str(CAPACITY)]
        began = time.perf_counter()
        errors = folder / f"stderr-{label}.txt"  # a file: a full pipe would stall the run
        with open(errors, "w") as sink:
            proc = subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE,
                                    stderr=sink, text=True, bufsize=1)
        tree = Tree(proc.pid)
        peak = [0.0, 0.0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(1.0):
                now = tree.rss_mb()
                peak[0], peak[1] = max(peak[0], now[0]), max(peak[1], now[1])

        threading.Thread(target=watch, daemon=True).start()
        elapsed: dict[int, float] = {}
        total = 0
        rss: dict[str, tuple[float, float]] = {}
        heap: dict[str, float | None] = {}
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            found = BATCH_LINE.match(line)
            if not found:
                continue
            number, total = int(found.group(1)), int(found.group(2))
            elapsed[number] = float(found.group(3))
            if number == total // 10:
                rss["start"] = tree.rss_mb()
                heap["start"] = tree.heap_after_gc_mb()
            if number == total - total // 10:
                heap["end"] = tree.heap_after_gc_mb()
            if number == total:
                rss["end"] = tree.rss_mb()
        code = proc.wait()
        stderr = errors.read_text(errors="replace")
        wall = time.perf_counter() - began
        done.set()
    if code != 0:
        raise RuntimeError(f"vision-batch run ({label}) failed: {stderr[-2000:]}")
    log = Path(tempfile.gettempdir()) / f"vision-batch-spark-{proc.pid}.log"
    jvm_text = log.read_text(errors="replace") if log.exists() else ""
    return {"label": label, "wall": wall, "elapsed": elapsed, "batches": total, "rss": rss,
            "peak": peak, "heap": heap, "lines": lines, "table": table,
            "code_cache_full": jvm_text.count("CodeCache is full"), "jvm_log": log,
            "jvm_log_found": log.exists()}


def tenths(elapsed: dict[int, float], total: int) -> list[float]:
    """Seconds per batch in each tenth of the batches (the first from batch 1's line)."""
    size = total // 10
    out = []
    for t in range(10):
        last = size * (t + 1) if t < 9 else total
        first = size * t if t else 1
        if last not in elapsed or first not in elapsed:
            out.append(float("nan"))
            continue
        out.append((elapsed[last] - elapsed[first]) / (last - first))
    return out


def table_state(location: Path) -> dict:
    """Files live in the Delta log and on disk, commits, and the last checkpoint."""
    from deltalake import DeltaTable

    log = location / "_delta_log"
    if not log.exists():
        return {}
    live = len(DeltaTable(str(location)).file_uris())
    on_disk = sum(1 for p in location.glob("*.parquet"))
    commits = sum(1 for p in log.glob("*.json"))
    checkpoints = sum(1 for p in log.glob("*.checkpoint*.parquet"))
    last = log / "_last_checkpoint"
    version = json.loads(last.read_text())["version"] if last.exists() else None
    return {"live": live, "on_disk": on_disk, "commits": commits, "checkpoints": checkpoints,
            "last_checkpoint": version}


def report(result: dict) -> None:
    per = tenths(result["elapsed"], result["batches"])
    first, last = per[0], per[-1]
    print(f"  {result['label']}: {result['batches']} batches, the whole command "
          f"{result['wall']:.0f} s")
    print("    seconds per batch by tenth: " + "  ".join(f"{s:.2f}" for s in per))
    print(f"    the long run's seconds per batch at start and end: {first:.2f} s (batches 1-"
          f"{result['batches'] // 10}) and {last:.2f} s (the last {result['batches'] // 10}):"
          f" {last / first:.2f}x   (target <= {TARGET}x)")
    start, end = result["rss"].get("start", (0, 0)), result["rss"].get("end", (0, 0))
    print(f"    RSS, Python driver: {start[0]:.0f} MB -> {end[0]:.0f} MB (peak "
          f"{result['peak'][0]:.0f}); JVM: {start[1]:.0f} MB -> {end[1]:.0f} MB (peak "
          f"{result['peak'][1]:.0f})")
    heap = result["heap"]
    if heap.get("start") is not None and heap.get("end") is not None:
        print(f"    JVM heap in use after a full GC: {heap['start']:.0f} MB after the first "
              f"tenth, {heap['end']:.0f} MB after the ninth")
    for suffix in ("", "_runs", "_claims"):
        location = Path(str(result["table"]) + suffix)
        state = table_state(location)
        if not state:
            continue
        print(f"    {location.name:16s} {state['live']:4d} live files ({state['on_disk']} "
              f"Parquet files on disk), {state['commits']} commits, {state['checkpoints']} "
              f"checkpoints, _last_checkpoint "
              f"{'version ' + str(state['last_checkpoint']) if state['last_checkpoint'] is not None else 'absent'}")  # noqa: E501
    cache = result["code_cache_full"]
    print(f"    JVM output {result['jvm_log'].name}: "
          + ("not found" if not result["jvm_log_found"] else
             f"'CodeCache is full' {cache} time(s)" if cache else "no 'CodeCache is full'"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--baseline", help="git ref to run the same command with, after")
    parser.add_argument("--folder", help="keep the photos and tables here (default: a new "
                                         "temporary folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="vb-long-run-"))
    began = time.perf_counter()
    if not (folder / "in").exists():
        photos(folder / "in", args.files)
    print(f"{args.files} photos in {folder / 'in'} ({time.perf_counter() - began:.0f} s to "
          f"make); batches of {args.batch}; endpoint {LATENCY_MS} ms x {CAPACITY}")
    results = [run(folder, "now", args.files, args.batch)]
    report(results[0])
    if args.baseline:
        base = worktree(args.baseline, folder / f"baseline-{args.baseline}")
        results.append(run(folder, f"baseline {args.baseline}".replace(" ", "-"), args.files,
                           args.batch, pythonpath=base))
        report(results[1])
        now, then = (tenths(r["elapsed"], r["batches"]) for r in results)
        print(f"  side by side, seconds per batch first / last tenth: this checkout "
              f"{now[0]:.2f} / {now[-1]:.2f} ({now[-1] / now[0]:.2f}x), {args.baseline} "
              f"{then[0]:.2f} / {then[-1]:.2f} ({then[-1] / then[0]:.2f}x)")


if __name__ == "__main__":
    main()
