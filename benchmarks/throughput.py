"""Requests at the endpoint's capacity: vision-batch vs the naive pattern from the docs.

A local endpoint (its own process) answers in 250 ms and admits 16 requests at once, so no
client can exceed 16 / 0.25 = 64 images/s. The same 500 images go through:
  (a) vision-batch: `run` with --max-concurrency 16 (async client in a pandas iterator UDF,
      one budget split over the Spark tasks);
  (b) the Databricks docs' pattern: a pandas UDF calling the synchronous OpenAI client once per
      row, on the same number of Spark tasks.
Throughput is measured where it matters, at the endpoint: answers / (last answer - first
request). Targets: (a) >= 0.9 of the bound with <= 5% of requests turned away (429), and
(a) >= 5x (b). Client CPU per request is measured in this process for both clients.

    python benchmarks/throughput.py [--images 500] [--latency-ms 250] [--capacity 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
from pyspark.sql.functions import pandas_udf

from pipeline import run as runner
from pipeline.auth import static
from pipeline.client import CaptionClient, ClientSettings
from pipeline.config import RunConfig
from pipeline.payloads import PromptSpec, caption_parser, chat_body, data_url, encode
from pipeline.spark import get_spark

ENDPOINT = "bench-vlm"


def jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


class Endpoint:
    """`vision-batch serve-local` in a subprocess, so its work is not in our process."""

    def __init__(self, latency_ms: float, capacity: int, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.token = secrets.token_urlsafe(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABRICKS_TOKEN": self.token}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve-local", "--port", str(self.port),
             "--latency-ms", str(latency_ms), "--max-concurrency", str(capacity), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                self.stats()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the local endpoint did not start")

    def stats(self) -> dict:
        response = httpx.get(f"{self.url}/local/stats",
                             headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        response.raise_for_status()
        return response.json()

    def restart(self, latency_ms: float, capacity: int) -> Endpoint:
        self.stop()
        return Endpoint(latency_ms, capacity)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def measured(stats: dict) -> tuple[float, float]:
    window = stats["last_answer_at"] - stats["first_request_at"]
    refused = stats["by_status"].get("429", 0) / max(1, stats["requests"])
    return stats["answered_ok"] / window, refused


def naive_udf(url: str, token: str, prompt: str):
    @pandas_udf("string")
    def caption(images: pd.Series, mimes: pd.Series) -> pd.Series:
        from openai import OpenAI

        client = OpenAI(base_url=f"{url}/serving-endpoints", api_key=token, max_retries=0)
        answers = []
        for image, mime in zip(images, mimes, strict=True):
            completion = client.chat.completions.create(
                model=ENDPOINT,
                messages=[{"role": "user", "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": data_url(mime, bytes(image))}},
                ]}],
            )
            answers.append(completion.choices[0].message.content)
        return pd.Series(answers)

    return caption


def cpu_per_request(url: str, token: str, images: list[bytes], capacity: int) -> tuple[float,
                                                                                       float]:
    """Client CPU seconds per request: our async client vs the sync OpenAI client."""
    from openai import OpenAI

    spec = PromptSpec("Describe this image.", 64)
    creds = static(url, token)
    bodies = [encode(chat_body(spec, [("image/jpeg", i)])) for i in images]

    async def ours() -> None:
        settings = ClientSettings(f"{url}/serving-endpoints/{ENDPOINT}/invocations", creds,
                                  30.0, 3, capacity)
        async with CaptionClient(settings) as client:
            parse = caption_parser("caption", False)
            await asyncio.gather(*(client.call(b, parse) for b in bodies))

    started = time.process_time()
    asyncio.run(ours())
    a = (time.process_time() - started) / len(images)
    client = OpenAI(base_url=f"{url}/serving-endpoints", api_key=token, max_retries=0)
    started = time.process_time()
    for image in images:
        client.chat.completions.create(model=ENDPOINT, messages=[{"role": "user", "content": [
            {"type": "text", "text": spec.prompt},
            {"type": "image_url", "image_url": {"url": data_url("image/jpeg", image)}}]}])
    b = (time.process_time() - started) / len(images)
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=250)
    parser.add_argument("--capacity", type=int, default=16)
    args = parser.parse_args()
    bound = args.capacity / (args.latency_ms / 1000)

    folder = Path(tempfile.mkdtemp(prefix="vb-throughput-"))
    images = [jpeg(64 + i % 97, 48 + i // 97) for i in range(args.images)]
    for i, data in enumerate(images):
        (folder / f"img{i:04}.jpg").write_bytes(data)
    spark = get_spark("vision-batch-bench")
    tasks = spark.sparkContext.defaultParallelism
    print(f"{args.images} images, endpoint latency {args.latency_ms:g} ms, admits "
          f"{args.capacity} at once: bound {bound:.0f} images/s; {tasks} Spark task slots")

    endpoint = Endpoint(args.latency_ms, args.capacity)
    try:
        cfg = RunConfig(input=str(folder), table=str(folder / "out" / "captions"),
                        endpoint=ENDPOINT, host=endpoint.url,
                        max_concurrency=args.capacity, max_files_per_batch=args.images)
        started = time.perf_counter()
        result = runner.run(cfg, static(endpoint.url, endpoint.token), spark,
                            progress=lambda _: None)
        whole = time.perf_counter() - started
        a_rate, a_refused = measured(endpoint.stats())
        assert result.statuses["ok"] == args.images, result.statuses

        endpoint = endpoint.restart(args.latency_ms, args.capacity)
        ctx = runner.context(cfg, spark)
        rows = [{"path": f"file:{p}", "length": p.stat().st_size, "modificationTime": None}
                for p in sorted(folder.glob("*.jpg"))]
        prepared = runner.prepare_batch(spark, ctx, rows, runner.Held())
        udf = naive_udf(endpoint.url, endpoint.token, cfg.prompt)
        answered = (prepared.repartition(tasks).select(udf("image", "mime").alias("c"))
                    .filter("c IS NOT NULL").count())
        assert answered == args.images
        b_rate, b_refused = measured(endpoint.stats())

        endpoint = endpoint.restart(args.latency_ms, args.capacity)
        sample = images[: min(64, len(images))]
        cpu_a, cpu_b = cpu_per_request(endpoint.url, endpoint.token, sample, args.capacity)
    finally:
        endpoint.stop()

    print(f"  (a) vision-batch        {a_rate:6.1f} images/s   {a_refused:6.1%} turned away "
          f"(whole run incl. Spark listing, prep, MERGE: {args.images / whole:.1f} images/s; "
          f"latency p50 {result.latency_p50_ms:.0f} ms)")
    print(f"  (b) naive sync UDF      {b_rate:6.1f} images/s   {b_refused:6.1%} turned away")
    print(f"  (a) / bound             {a_rate / bound:6.2f}        (target >= 0.90)")
    print(f"  (a) / (b)               {a_rate / b_rate:6.1f}x       (target >= 5x)")
    print(f"  client CPU per request  (a) {cpu_a * 1000:.2f} ms   (b) {cpu_b * 1000:.2f} ms")


if __name__ == "__main__":
    main()
