"""The local JVM's JIT options, side by side: the demo's cold start and a run of minutes.

Each candidate is a set of JIT options that `pipeline/spark.py` passes to the local JVM in
place of its own (through VISION_BATCH_JVM_OPTIONS, which exists for this benchmark), with
-XX:+PrintCodeCache added: at its exit the JVM writes its code cache's high-water mark
(max_used) and how often it was full into its output, the log `spark_log_path()` names. Each
command runs with its own TMPDIR, so each run's log is its own.

Part 1. The demo, cold, as users run it: `vision-batch run` with no arguments (12 embedded
photos, the embedded endpoint) in a fresh folder; the whole command's wall clock. --reps
rounds, each candidate once a round in the same order (A B C A B C ...) so the machine's drift
hits each alike, after one unmeasured run that warms the disk cache. Reported: the median
wall, the median of each round's ratio to the first candidate (the options before), and the
spread (max - min) of the walls, for how noisy the machine was.

Part 2. --images photos (default 6000) in batches of --batch (250), against an endpoint in
its own process answering in 250 ms, 16 at once (bound 64 images/s), once per candidate per
round (--long-reps): the whole command's wall, images/s over it, the endpoint's own rate
(first request to last answer), the JVM's CPU seconds and those of its JIT compiler threads
(from /proc, every 0.5 s), the code cache's peak (max_used, summed over its segments when it
has several) against its size, how often it was full, and whether the JVM said `CodeCache is
full`. Every --sample-every seconds `jcmd Compiler.codecache` reads what is in use, for the curve.

    python benchmarks/jvm_options.py [--reps 5] [--images 6000] [--batch 250] [--long-reps 1]
                                     [--only LABEL ...] [--candidate LABEL=OPTIONS ...]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from common import Endpoint, photos, rate

# The first is the baseline of every ratio: the options before issue #25.
CANDIDATES = {
    "C1, 48m (before)": "-XX:TieredStopAtLevel=1",
    "C1, 256m": "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m",
    "JVM default": "",  # C1 and C2 (tiered), 240 MB in three segments
}
LATENCY_MS, CAPACITY = 250, 16
TICK = 0.5  # seconds between reads of the JVM's CPU
# A code cache summary: one CodeCache line, or a CodeHeap line per segment, each followed by
# its indented lines.
SUMMARY = re.compile(r"(?:^CodeHeap '[^']+': .*\n(?:^ .*\n)*)+|^CodeCache: .*\n(?:^ .*\n)*",
                     re.MULTILINE)


@dataclass
class Run:
    wall: float
    out: str
    log: str
    cpu: float  # the JVM's user + system seconds
    jit_cpu: float  # of which its compiler threads
    used_mb: list[tuple[float, float]] = field(default_factory=list)  # (s, MB), from jcmd

    def code_cache(self) -> tuple[float, float, int]:
        """(peak MB, size MB, times full) from -XX:+PrintCodeCache at the JVM's exit: the
        last summary in its output (it writes one more each time the cache fills)."""
        summaries = SUMMARY.findall(self.log)
        if not summaries:
            raise RuntimeError("the JVM's output has no code cache summary:\n" + self.log[-2000:])
        last = summaries[-1]
        sizes = [int(k) for k in re.findall(r"\bsize=(\d+)Kb", last)]
        peaks = [int(k) for k in re.findall(r"\bmax_used=(\d+)Kb", last)]
        full = [int(n) for n in re.findall(r"full_count=(\d+)", last)]
        return sum(peaks) / 1024, sum(sizes) / 1024, sum(full)

    def said_full(self) -> str:
        """When the JVM said its code cache was full ("at 148 s" of its life), or ""."""
        when = re.search(r"\[([\d.]+)s\]\[warning\]\[codecache\] CodeCache is full", self.log)
        if when:
            return f"at {float(when[1]):.0f} s"
        return "yes" if "CodeCache is full" in self.log else ""


def jvm_of(pid: int) -> psutil.Process | None:
    """The Spark driver JVM under a command's process (spark-submit execs into it)."""
    try:
        for child in psutil.Process(pid).children(recursive=True):
            line = child.cmdline()  # not the launcher that writes its command line first
            if child.name() == "java" and "org.apache.spark.launcher.Main" not in line and any(
                    a.endswith(".SparkSubmit") for a in line):
                return child
    except psutil.Error:
        pass
    return None


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of a process: (its name, its user + system seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            threads[int(task.name)] = (name, (int(stat[11]) + int(stat[12])) / tick)
        except (OSError, IndexError, ValueError):
            continue  # the thread ended between the listing and the read
    return threads


def codecache_used(pid: int) -> float | None:
    done = subprocess.run(["jcmd", str(pid), "Compiler.codecache"], capture_output=True,
                          text=True, timeout=30)
    used = [int(k) for k in re.findall(r"\bused=(\d+)Kb", done.stdout)]
    return sum(used) / 1024 if used else None


def timed(args: list[str], options: str, cwd: Path, token: str | None = None,
          sample_every: float = 0) -> Run:
    """`vision-batch ARGS` as a fresh process with the given JIT options: its wall time, what
    it printed, and what its JVM did (CPU, code cache); it must succeed."""
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=cwd))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABRICKS_", "SPARK_REMOTE", "VISION_BATCH_"))}
    env.update(TMPDIR=str(tmp), VISION_BATCH_JVM_OPTIONS=f"{options} -XX:+PrintCodeCache".strip())
    if token:
        env["DATABRICKS_TOKEN"] = token
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    threads: dict[int, tuple[str, float]] = {}
    used: list[tuple[float, float]] = []
    jvms: list[psutil.Process] = []
    done = threading.Event()

    def watch() -> None:
        next_sample = sample_every
        while not done.wait(TICK):
            if not jvms and (found := jvm_of(proc.pid)):
                jvms.append(found)
            if not jvms:
                continue
            jvm = jvms[0]
            try:
                threads.update(thread_cpu(jvm.pid))
            except OSError:
                return  # the JVM is gone (Python stops it as it exits)
            now = time.perf_counter() - started
            if sample_every and now >= next_sample:
                next_sample += sample_every
                mb = codecache_used(jvm.pid)
                if mb is not None:
                    used.append((now, mb))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"vision-batch {' '.join(args)} failed: {err[-2000:]}")
    for jvm in jvms:  # it writes its code cache summary as it exits, after Python
        try:
            jvm.wait(timeout=120)
        except psutil.Error:
            pass
    log = "".join(p.read_text(errors="replace") for p in tmp.glob("vision-batch-spark-*"))
    cpu = sum(seconds for _, seconds in threads.values())
    jit = sum(seconds for name, seconds in threads.values() if "CompilerThre" in name)
    return Run(wall, out, log, cpu, jit, used)


def demos(folder: Path, candidates: dict[str, str], reps: int) -> dict[str, list[Run]]:
    first = next(iter(candidates.values()))
    warm = folder / "demo-warm-up"
    warm.mkdir()
    timed(["run"], first, warm)  # not counted: the jars and the package into the disk cache
    runs: dict[str, list[Run]] = {label: [] for label in candidates}
    for rep in range(reps):
        for i, (label, options) in enumerate(candidates.items()):
            cwd = folder / f"demo-{rep}-{i}"
            cwd.mkdir()
            run = timed(["run"], options, cwd)
            assert "12 ok" in run.out, run.out
            runs[label].append(run)
            print(f"    round {rep + 1}, {label}: {run.wall:.1f} s", flush=True)
    return runs


def long_runs(folder: Path, candidates: dict[str, str], images: int, batch: int, reps: int,
              sample_every: float) -> dict[str, list[tuple[Run, dict]]]:
    runs: dict[str, list[tuple[Run, dict]]] = {label: [] for label in candidates}
    for rep in range(reps):
        for i, (label, options) in enumerate(candidates.items()):
            with Endpoint(LATENCY_MS, CAPACITY) as endpoint:
                run = timed(["run", *endpoint.flags(), "--input", str(folder / "in"),
                             "--table", str(folder / f"long-{rep}-{i}" / "captions"),
                             "--max-files-per-batch", str(batch),
                             "--max-concurrency", str(CAPACITY)],
                            options, folder, token=endpoint.token, sample_every=sample_every)
                stats = endpoint.stats()
            assert f"{images} ok" in run.out, run.out
            runs[label].append((run, stats))
            peak, size, full = run.code_cache()
            print(f"    round {rep + 1}, {label}: {run.wall:.1f} s, code cache peak "
                  f"{peak:.1f} of {size:.0f} MB, full {full} times", flush=True)
    return runs


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def report_demos(runs: dict[str, list[Run]]) -> None:
    base = next(iter(runs.values()))
    base_wall = statistics.median(r.wall for r in base)
    base_cpu = statistics.median(r.cpu for r in base)
    print(f"\n  the demo, cold, as a command: medians of {len(base)} rounds; x = against the "
          "first candidate; each round's own ratio, lowest-highest")
    print(f"  {'candidate':18s} {'wall s':>7s} {'x':>5s} {'rounds x':>10s} {'walls s':>11s} "
          f"{'JVM CPU s':>9s} {'x':>5s} {'JIT CPU s':>9s} {'cache peak MB':>13s}")
    for label, rs in runs.items():
        walls = [r.wall for r in rs]
        wall, cpu = statistics.median(walls), statistics.median(r.cpu for r in rs)
        paired = [r.wall / b.wall for r, b in zip(rs, base, strict=True)]
        print(f"  {label:18s} {wall:7.1f} {wall / base_wall:5.2f} "
              f"{f'{min(paired):.2f}-{max(paired):.2f}':>10s} {spread(walls):>11s} "
              f"{cpu:9.1f} {cpu / base_cpu:5.2f} "
              f"{statistics.median(r.jit_cpu for r in rs):9.1f} "
              f"{max(r.code_cache()[0] for r in rs):13.1f}")


def report_long(runs: dict[str, list[tuple[Run, dict]]], images: int, batch: int) -> None:
    print(f"\n  {images} photos, batches of {batch}, endpoint {LATENCY_MS} ms x {CAPACITY} "
          f"(bound {CAPACITY * 1000 / LATENCY_MS:.0f} images/s); medians over rounds, x = "
          "against the first candidate")
    print(f"  {'candidate':18s} {'wall s':>7s} {'x':>5s} {'images/s':>8s} {'endpoint/s':>10s} "
          f"{'JVM CPU s':>9s} {'x':>5s} {'JIT CPU s':>9s} {'cache peak/size MB':>18s} "
          f"{'full':>4s} {'said full':>9s}")
    first = next(iter(runs.values()))
    base_wall = statistics.median(r.wall for r, _ in first)
    base_cpu = statistics.median(r.cpu for r, _ in first)
    for label, pairs in runs.items():
        wall = statistics.median(r.wall for r, _ in pairs)
        cpu = statistics.median(r.cpu for r, _ in pairs)
        peak = max(r.code_cache()[0] for r, _ in pairs)
        size = pairs[0][0].code_cache()[1]
        said = [r.said_full() for r, _ in pairs if r.said_full()]
        print(f"  {label:18s} {wall:7.1f} {wall / base_wall:5.2f} {images / wall:8.1f} "
              f"{statistics.median(rate(s)[0] for _, s in pairs):10.1f} "
              f"{cpu:9.1f} {cpu / base_cpu:5.2f} "
              f"{statistics.median(r.jit_cpu for r, _ in pairs):9.1f} "
              f"{f'{peak:.1f} / {size:.0f}':>18s} "
              f"{sum(r.code_cache()[2] for r, _ in pairs):4d} {said[0] if said else 'no':>9s}")
    for label, pairs in runs.items():
        for run, _ in pairs:
            if run.used_mb:
                curve = " ".join(f"{mb:.0f}" for _, mb in run.used_mb)
                print(f"  {label}: code cache in use, MB, every {run.used_mb[0][0]:.0f} s or "
                      f"so: {curve}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="rounds of the demo (0: none)")
    parser.add_argument("--images", type=int, default=6000,
                        help="photos of the long run (0: no long run)")
    parser.add_argument("--batch", type=int, default=250, help="files per batch, long run")
    parser.add_argument("--long-reps", type=int, default=1, help="rounds of the long run")
    parser.add_argument("--sample-every", type=float, default=15,
                        help="seconds between jcmd reads of the code cache in a long run")
    parser.add_argument("--only", nargs="+", metavar="LABEL",
                        help="only these of the default candidates")
    parser.add_argument("--candidate", action="append", default=[], metavar="LABEL=OPTIONS",
                        help="another candidate (repeatable)")
    args = parser.parse_args()
    candidates = {k: v for k, v in CANDIDATES.items() if not args.only or k in args.only}
    candidates.update(dict(c.split("=", 1) for c in args.candidate))
    folder = Path(tempfile.mkdtemp(prefix="vb-jvm-options-"))
    print(f"candidates (JIT options of the local JVM; working in {folder}):")
    for label, options in candidates.items():
        print(f"  {label:18s} {options or '(none)'}")
    loads: list[float] = []  # the machine's load while this runs, every 5 s
    stop = threading.Event()

    def sample_load() -> None:
        while not stop.wait(5):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    started = time.perf_counter()
    if args.reps:
        print("Part 1: the demo, cold")
        report_demos(demos(folder, candidates, args.reps))
    if args.images:
        print(f"Part 2: {args.images} photos")
        photos(folder / "in", args.images)
        report_long(long_runs(folder, candidates, args.images, args.batch, args.long_reps,
                              args.sample_every), args.images, args.batch)
    stop.set()
    print(f"\n  {time.perf_counter() - started:.0f} s in all, on {os.cpu_count()} cores; load "
          f"average (1 min, every 5 s): median {statistics.median(loads or [0]):.1f}, "
          f"{spread(loads or [0])}")


if __name__ == "__main__":
    main()
