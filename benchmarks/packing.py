"""Packing K images per request under a requests-per-minute cap: K = 1 vs K = 5.

Pay-per-token endpoints limit queries per time window, not images. A local endpoint (its own
process) admits at most --rpm requests per minute and answers in --latency-ms; vision-batch
runs the same images with `images_per_request` 1 and then 5, pacing itself to the cap
(`max_rpm`). Images/s is measured at the endpoint (images answered / (last answer - first
request)); tokens per image from the rows written. Every caption is checked against its row:
the local model writes the size of the image it saw, and every image has its own size.
Target: K = 5 at least 4x the images/s of K = 1, with no caption on a wrong row.

    python benchmarks/packing.py [--images 100] [--rpm 300] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import Endpoint, jpeg

from pipeline import runs as runner
from pipeline.config import RunConfig
from pipeline.endpoint.auth import static
from pipeline.spark import get_spark

ENDPOINT = "bench-vlm"


def one_run(spark, folder: Path, k: int, args) -> tuple[float, float, int, int]:
    """(images/s at the endpoint, tokens per image, requests, captions on a wrong row)."""
    endpoint = Endpoint(args.latency_ms, 64, "--max-rpm", str(args.rpm))  # serves bench-vlm
    try:
        table = str(folder / f"out-k{k}" / "captions")
        cfg = RunConfig(input=str(folder / "in"), table=table, endpoint=ENDPOINT, host=endpoint.url,
                        max_concurrency=16, max_rpm=args.rpm, images_per_request=k,
                        max_files_per_batch=args.images)
        result = runner.run(cfg, static(endpoint.url, endpoint.token), spark,
                            progress=lambda _: None)
        stats = endpoint.stats()
    finally:
        endpoint.stop()
    assert result.statuses["ok"] == args.images, result.statuses
    rows = spark.read.format("delta").load(table).collect()
    wrong = sum(f"{r.sent_width}x{r.sent_height} pixels" not in r.caption for r in rows)
    rate = stats["images"] / (stats["last_answer_at"] - stats["first_request_at"])
    tokens = sum(r.total_tokens for r in rows) / len(rows)
    return rate, tokens, stats["requests"], wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rpm", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=200)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vb-packing-"))
    (folder / "in").mkdir()
    for i in range(args.images):  # distinct sizes: a caption names the image it describes
        (folder / "in" / f"img{i:04}.jpg").write_bytes(jpeg(64 + i % 97, 48 + i // 97))
    spark = get_spark("vision-batch-bench")
    print(f"{args.images} images; endpoint caps {args.rpm} requests/min, answers in "
          f"{args.latency_ms:g} ms; the run paces itself to the cap")
    figures = {k: one_run(spark, folder, k, args) for k in (1, 5)}
    for k, (rate, tokens, requests, wrong) in figures.items():
        print(f"  K = {k}   {rate:6.1f} images/s   {tokens:7.1f} tokens/image   "
              f"{requests:4d} requests   {wrong} captions on a wrong row")
    ratio = figures[5][0] / figures[1][0]
    print(f"  K = 5 / K = 1   {ratio:.1f}x images/s (target >= 4x), "
          f"{figures[5][1] / figures[1][1]:.2f}x tokens per image")


if __name__ == "__main__":
    main()
