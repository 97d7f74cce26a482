"""Two runs at once on the same input and table (an overlapping schedule), against one run
alone, with this checkout and with a baseline commit (before runs shared the work).

2000 photos in batches of 250; one endpoint (its own process) that answers in 250 ms and
admits 16 at once, shared by both runs. For each side: the requests the endpoint answered
(the cost), what each run says it asked, and the wall time until both commands ended.
Target: the two runs pay for at most the files and one batch (the first, asked while its
claim is written), where the baseline pays for most files twice.

    python benchmarks/overlap.py [--baseline REF]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Endpoint, command, photos
from pipelining import worktree

BASELINE = "dd3eb8e"  # the last commit before claims
IMAGES, BATCH, LATENCY_MS, CAPACITY = 2000, 250, 250, 16


def runs(folder: Path, label: str, together: int, pythonpath: Path | None) -> dict:
    """`together` runs of `vision-batch run` started at once on one table."""
    table = folder / f"out-{label}-{together}" / "captions"
    with Endpoint(LATENCY_MS, CAPACITY) as endpoint:
        def one(_: int) -> tuple[float, str]:
            return command("run", *endpoint.flags(), "--input", str(folder / "in"), "--table",
                           str(table), "--max-files-per-batch", str(BATCH),
                           "--max-concurrency", str(CAPACITY // together), cwd=folder,
                           token=endpoint.token, pythonpath=pythonpath)

        started = time.perf_counter()
        with ThreadPoolExecutor(together) as pool:
            done = list(pool.map(one, range(together)))
        wall = time.perf_counter() - started
        answered = endpoint.stats()["answered_ok"]
    # The summary's line, the last to count them (batch lines count so far).
    asked = [int(re.findall(r"(\d+) ok, \d+ invalid", out)[-1]) for _, out in done]
    return {"wall": wall, "answered": answered, "asked": asked}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vb-overlap-") as tmp:
        folder = Path(tmp)
        photos(folder / "in", IMAGES)
        base = worktree(args.baseline, folder / "baseline")
        print(f"{IMAGES} photos, batches of {BATCH}, one endpoint {LATENCY_MS} ms x "
              f"{CAPACITY} shared by the runs (each run gets {CAPACITY // 2} of it when two)")
        for label, path in (("this checkout", None), (f"baseline {args.baseline}", base)):
            alone = runs(folder, label.split()[0], 1, path)
            pair = runs(folder, label.split()[0], 2, path)
            print(f"  {label:18s} one run: {alone['answered']} answered, "
                  f"{alone['wall']:5.1f} s | two at once: {pair['answered']} answered "
                  f"({pair['answered'] / IMAGES:.2f} per file; the runs say "
                  f"{' + '.join(map(str, pair['asked']))} ok), both done in "
                  f"{pair['wall']:5.1f} s")
        print(f"  target: two at once answer at most {IMAGES + BATCH} "
              "(the files and one batch)")


if __name__ == "__main__":
    main()
