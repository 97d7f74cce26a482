"""What a crash costs: `kill -9` a run at about 60% of its files, run it again, and count what
the endpoint was paid beyond one answer per file, for several batch sizes, before and after
answers were journaled as they arrive (#25), side by side in one run.

Before (BASELINE), a killed run lost the answers of the batches in flight: the rework grew
with the batch size. Now it is the answers of the last second or so, and those in flight.

    python benchmarks/crash_rework.py [--baseline REF] [--skip-baseline] [--files N]
                                      [--batches 50,300,1000]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Endpoint, photos

BASELINE = "bf2776b"  # main before #25
LATENCY_MS, CAPACITY = 200, 8  # about 40 answers a second


def killed_then_resumed(folder: Path, label: str, batch: int, count: int,
                        pythonpath: Path | None) -> dict:
    """One kill -9 at 60% of the files, one rerun: what the endpoint answered."""
    table = folder / f"out-{label}-{batch}" / "captions"
    with Endpoint(LATENCY_MS, CAPACITY) as endpoint:
        args = [sys.executable, "-m", "pipeline.cli", "run", *endpoint.flags(), "--input",
                str(folder / "in"), "--table", str(table), "--max-files-per-batch", str(batch),
                "--max-concurrency", str(CAPACITY), "--lease-seconds", "5"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
        env["DATABRICKS_TOKEN"] = endpoint.token
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        first = subprocess.Popen(args, env=env, cwd=folder, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 900
        while endpoint.stats()["answered_ok"] < 0.6 * count and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        time.sleep(1.0)  # what was in flight is answered (and paid) all the same
        killed_after = endpoint.stats()["answered_ok"]
        time.sleep(6)  # the dead run's lease lapses
        rerun = subprocess.run(args, env=env, cwd=folder, capture_output=True, text=True,
                               timeout=1800)
        if rerun.returncode != 0:
            raise RuntimeError(rerun.stderr[-2000:])
        answered = endpoint.stats()["answered_ok"]
    return {"killed_after": killed_after, "answered": answered, "rework": answered - count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--batches", default="50,300,1000")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="crash-rework-") as tmp:
        folder = Path(tmp)
        photos(folder / "in", args.files)
        base = None
        if not args.skip_baseline:
            base = folder / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base),
                            args.baseline], check=True, capture_output=True)
        try:
            rows = []
            for size in sizes:  # interleaved: the machine's drift hits both alike
                now = killed_then_resumed(folder, "now", size, args.files, None)
                then = (killed_then_resumed(folder, "base", size, args.files, base)
                        if base is not None else None)
                rows.append((size, now, then))
                print(f"batches of {size}: now {now}, before {then}", flush=True)
        finally:
            if base is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(base)], capture_output=True)
    print(f"\nkill -9 at 60% of {args.files} files, endpoint {LATENCY_MS} ms x {CAPACITY}; "
          "answers paid beyond one per file:")
    print(f"{'batch size':>10}  {'now':>14}  {f'before ({args.baseline})':>18}")
    for size, now, then in rows:
        before = "-" if then is None else (f"{then['rework']} "
                                           f"({then['rework'] / args.files:.0%})")
        print(f"{size:>10}  {now['rework']:>6} ({now['rework'] / args.files:.0%}){'':>3}  "
              f"{before:>18}")


if __name__ == "__main__":
    main()
