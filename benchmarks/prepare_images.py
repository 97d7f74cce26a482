"""Image preparation: reduced-scale JPEG decoding vs full decode + resize, and worker memory.

Part 1 prepares the same large photos two ways in one process and prints the ratio:
  (a) vision-batch's `images.prepare` (Pillow draft mode: the JPEG decoder skips to 1/2, 1/4
      or 1/8 scale, then a small resize);
  (b) the usual way: decode at full size, orient, resize with LANCZOS, encode.
Target: (a) at least 3x faster than (b).

Part 2 runs a whole run over 50 files of 15-20 MB in batches of 10, against an endpoint slow
enough that two batches are in flight at once, and samples the resident memory of every
Python worker (and of this process, the driver that sends the requests); it prints the
peaks. Target: each worker under 1.5 GB.

    python benchmarks/prepare_images.py [--photos 12] [--files 50]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from pathlib import Path

import psutil
from PIL import Image, ImageOps

from pipeline.images.limits import load_catalog
from pipeline.images.prepare import prepare

CATALOG = load_catalog()
FAMILY = CATALOG.families["claude"]  # 1568 px / 1.15 MP target: a typical downscale


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like picture: smooth gradients plus sensor noise, so JPEG cannot cheat."""
    ramp = Image.linear_gradient("L")
    r = ramp.resize((width, height))
    g = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    noise = Image.effect_noise((width, height), 40 + seed % 20)
    b = Image.blend(noise, r, 0.5)
    return Image.merge("RGB", (Image.blend(r, noise, 0.35), Image.blend(g, noise, 0.35), b))


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def full_decode_resize(data: bytes) -> bytes:
    """The baseline most pipelines use: full decode, orient, LANCZOS resize, encode."""
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        scale = min(1.0, FAMILY.target_side / max(w, h),
                    (FAMILY.target_pixels / (w * h)) ** 0.5)
        img = img.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)
        return jpeg_bytes(img, 85)


def speed(count: int) -> None:
    print(f"Part 1: {count} photos of 6000x4000 (24 MP), target {FAMILY.name} "
          f"({FAMILY.target_side} px, {FAMILY.target_pixels:,} px)")
    photos = [jpeg_bytes(photo(6000, 4000, i), 90) for i in range(count)]
    mb = sum(map(len, photos)) / count / 1e6
    budget = 3_000_000
    timings = {}
    for name, fn in (
        ("vision-batch (draft)", lambda d: prepare(d, FAMILY, CATALOG.input, budget)),
        ("full decode + resize", full_decode_resize),
    ):
        fn(photos[0])  # warm up
        started = time.perf_counter()
        for data in photos:
            fn(data)
        timings[name] = (time.perf_counter() - started) / count
    a, b = timings["vision-batch (draft)"], timings["full decode + resize"]
    print(f"  average input      {mb:.1f} MB")
    print(f"  (a) draft          {a * 1000:8.1f} ms/image")
    print(f"  (b) full decode    {b * 1000:8.1f} ms/image")
    print(f"  ratio (b)/(a)      {b / a:8.1f}x   (target >= 3x)")


def memory(count: int) -> None:
    import resource

    from common import Endpoint

    from pipeline.config import RunConfig
    from pipeline.endpoint.auth import static
    from pipeline.runs import run
    from pipeline.spark import get_spark

    folder = Path(tempfile.mkdtemp(prefix="vb-bench-"))
    batch = 10
    print(f"\nPart 2: {count} files of 15-20 MB through a whole run, batches of {batch} with "
          "two in flight, local Spark")
    sizes = []
    for i in range(count):
        data = jpeg_bytes(photo(5700 + (i % 5) * 100, 4000 + (i % 3) * 50, i), 97)
        (folder / "in").mkdir(exist_ok=True)
        (folder / "in" / f"photo{i:03}.jpg").write_bytes(data)
        sizes.append(len(data))
    print(f"  files              {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB "
          f"({sum(sizes) / 1e9:.2f} GB)")
    spark = get_spark("vision-batch-bench")
    peak: dict[int, int] = {}
    stop = threading.Event()
    with Endpoint(500, 8) as endpoint:  # slow enough that batches overlap

        def sample() -> None:
            me = psutil.Process()
            while not stop.is_set():
                for proc in me.children(recursive=True):
                    try:
                        if "python" in proc.name().lower() and proc.pid != endpoint.proc.pid:
                            peak[proc.pid] = max(peak.get(proc.pid, 0), proc.memory_info().rss)
                    except psutil.Error:
                        pass
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cfg = RunConfig(input=str(folder / "in"), table=str(folder / "out" / "captions"),
                        endpoint="bench-vlm", host=endpoint.url, max_concurrency=8,
                        max_files_per_batch=batch, model_family="claude").validate()
        started = time.perf_counter()
        result = run(cfg, static(endpoint.url, endpoint.token), spark, progress=lambda _: None)
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
    overlapping = _overlaps(result.timeline)
    workers = sorted(peak.values(), reverse=True)
    print(f"  captioned          {result.statuses['ok']}/{count} ok in {elapsed:.1f} s; at most "
          f"{overlapping} batches between asked and committed at once")
    print(f"  python workers     {len(workers)}; peak RSS per process: "
          + ", ".join(f"{w / 2**20:.0f} MB" for w in workers[:4]))
    print(f"  largest worker     {workers[0] / 2**30:.2f} GB   (target < 1.5 GB)")
    print(f"  this process (the driver, sending the requests) peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


def _overlaps(timeline) -> int:
    """Most batches at once between their first request and their commit."""
    asked = {n: began for n, stage, began, _ in timeline if stage == "ask"}
    committed = {n: ended for n, stage, _, ended in timeline if stage == "commit"}
    spans = [(asked[n], committed[n]) for n in asked if n in committed]
    return max(sum(b <= t < e for b, e in spans) for t, _ in spans) if spans else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    speed(args.photos)
    memory(args.files)


if __name__ == "__main__":
    main()
