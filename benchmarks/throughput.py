"""Requests at the endpoint's capacity, on a classic session and on Spark Connect, from the
executors and from the driver; vision-batch against the naive pattern from the docs.

A local endpoint (its own process) answers in 250 ms and admits 16 requests at once, so no
client can exceed 16 / 0.25 = 64 images/s. The same 500 images (one batch) go through:
  (a) `vision-batch run` as a process, four ways: a classic local session and a local Spark
      Connect server (SPARK_REMOTE=local[2]), each with --caller executors and driver;
  (b) the Databricks docs' pattern: a pandas UDF calling the synchronous OpenAI client once per
      row, on as many Spark tasks as the session has slots.
Throughput is measured at the endpoint: answers / (last answer - first request). Then the
12-photo demo, run cold on each session. Targets: every (a) >= 0.9 of the bound with <= 5%
turned away; the driver within 10% of the executors; classic executors >= 5x (b); the demo
on Connect within 1.3x of the classic one.

    python benchmarks/throughput.py [--images 500] [--latency-ms 250] [--capacity 16]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import Endpoint, command, jpeg, photos, rate

ENDPOINT = "bench-vlm"
SESSIONS = {"classic": {}, "connect": {"SPARK_REMOTE": "local[2]"}}


def callers(folder: Path, args) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(session, caller) -> (images/s at the endpoint, share turned away, command wall s)."""
    figures = {}
    for session, env in SESSIONS.items():
        for caller in ("executors", "driver"):
            with Endpoint(args.latency_ms, args.capacity) as endpoint:
                table = folder / f"out-{session}-{caller}" / "captions"
                wall, out = command(
                    "run", *endpoint.flags(), "--input", str(folder / "in"), "--table",
                    str(table), "--caller", caller, "--max-concurrency", str(args.capacity),
                    "--max-files-per-batch", str(args.images), cwd=folder,
                    token=endpoint.token, env=env)
                assert f"{args.images} ok" in out, out
                figures[session, caller] = (*rate(endpoint.stats()), wall)
    return figures


def naive_udf(url: str, token: str, prompt: str):
    from pyspark.sql.functions import pandas_udf

    from pipeline.endpoint.payloads import data_url

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


def naive(folder: Path, args) -> float:
    """(b): the same images, prepared by vision-batch, asked one by one per Spark task."""
    from dataclasses import replace

    from pipeline.config import RunConfig
    from pipeline.files import source
    from pipeline.runs import plan
    from pipeline.runs.context import context
    from pipeline.runs.prepare import prepare
    from pipeline.spark import get_spark, parallelism

    spark = get_spark("vision-batch-bench")
    cfg = RunConfig(input=str(folder / "in"), table=str(folder / "naive"), endpoint=ENDPOINT,
                    max_files_per_batch=args.images).validate()
    ctx = replace(context(cfg))
    (batch,) = plan.files(spark, ctx, source.list_files(spark, cfg.input)).stream
    prepared = prepare(spark, ctx, batch)
    assert prepared.held is not None
    tasks = parallelism(spark)
    with Endpoint(args.latency_ms, args.capacity) as endpoint:
        udf = naive_udf(endpoint.url, endpoint.token, cfg.prompt)
        answered = (prepared.held.repartition(tasks).select(udf("image", "mime").alias("c"))
                    .filter("c IS NOT NULL").count())
        assert answered == args.images
        return rate(endpoint.stats())[0]


def cpu_per_request(images: list[bytes], capacity: int) -> tuple[float, float]:
    """Client CPU seconds per request: our async client vs the sync OpenAI client."""
    from openai import OpenAI

    from pipeline.endpoint.auth import static
    from pipeline.endpoint.client import CaptionClient, ClientSettings
    from pipeline.endpoint.payloads import PromptSpec, caption_parser, chat_body, data_url, encode

    spec = PromptSpec("Describe this image.", 64)
    bodies = [encode(chat_body(spec, [("image/jpeg", i)])) for i in images]
    with Endpoint(0, capacity) as endpoint:
        creds = static(endpoint.url, endpoint.token)

        async def ours() -> None:
            settings = ClientSettings(
                f"{endpoint.url}/serving-endpoints/{ENDPOINT}/invocations", creds, 30.0, 3,
                capacity)
            async with CaptionClient(settings) as client:
                parse = caption_parser("caption", False)
                await asyncio.gather(*(client.call(b, parse) for b in bodies))

        started = time.process_time()
        asyncio.run(ours())
        a = (time.process_time() - started) / len(images)
        client = OpenAI(base_url=f"{endpoint.url}/serving-endpoints", api_key=endpoint.token,
                        max_retries=0)
        started = time.process_time()
        for image in images:
            client.chat.completions.create(model=ENDPOINT, messages=[{"role": "user", "content": [
                {"type": "text", "text": spec.prompt},
                {"type": "image_url", "image_url": {"url": data_url("image/jpeg", image)}}]}])
        b = (time.process_time() - started) / len(images)
    return a, b


def demos(folder: Path) -> dict[str, float]:
    """The no-argument demo (12 photos, the embedded endpoint), cold, on each session."""
    walls = {}
    for session, env in SESSIONS.items():
        cwd = folder / f"demo-{session}"
        cwd.mkdir()
        walls[session], out = command("run", cwd=cwd, env=env)
        assert "12 ok" in out, out
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=250)
    parser.add_argument("--capacity", type=int, default=16)
    args = parser.parse_args()
    bound = args.capacity / (args.latency_ms / 1000)

    folder = Path(tempfile.mkdtemp(prefix="vb-throughput-"))
    photos(folder / "in", args.images)
    print(f"{args.images} images in one batch, endpoint latency {args.latency_ms:g} ms, admits "
          f"{args.capacity} at once: bound {bound:.0f} images/s")
    figures = callers(folder, args)
    for (session, caller), (images_s, refused, wall) in figures.items():
        print(f"  (a) {session:8s} {caller:9s} {images_s:6.1f} images/s = "
              f"{images_s / bound:4.2f} of bound, {refused:5.1%} turned away "
              f"(whole command {wall:5.1f} s)")
    for session in SESSIONS:
        ratio = figures[session, "driver"][0] / figures[session, "executors"][0]
        print(f"      {session:8s} driver / executors {ratio:5.2f}   (target >= 0.90)")
    naive_rate = naive(folder, args)
    print(f"  (b) naive sync UDF      {naive_rate:6.1f} images/s")
    print(f"  (a) classic executors / (b)  {figures['classic', 'executors'][0] / naive_rate:5.1f}x"
          "   (target >= 5x)")
    cpu_a, cpu_b = cpu_per_request([jpeg(64 + i, 48) for i in range(64)], args.capacity)
    print(f"  client CPU per request  async httpx {cpu_a * 1000:.2f} ms, "
          f"sync openai {cpu_b * 1000:.2f} ms")
    walls = demos(folder)
    print(f"  demo, cold: classic {walls['classic']:.1f} s, Connect {walls['connect']:.1f} s: "
          f"{walls['connect'] / walls['classic']:.2f}x   (target <= 1.3x)")


if __name__ == "__main__":
    main()
