"""Pacing to a pay-per-token endpoint's limits: told the limit vs AIMD alone, and settling the
reserved output vs keeping it.

A local endpoint (its own process) answers in 250 ms, admits 16 requests at once and enforces
an input-token limit (36,000 a minute), or an output-token limit, over a 60 s window, with
429 and Retry-After past it, as Databricks pay-per-token endpoints do. `vision-batch run`
runs as a process each time, on the same photos (about 340 input tokens per request):
  (a) ITPM: with --max-itpm 36000, then with AIMD alone (no --max-itpm);
  (b) OTPM: --max-otpm and --max-tokens 4x the real answers, settled with the real usage,
      then with the reservation kept for good (benchmarks/reserved_output.py).
Throughput is measured at the endpoint: answers / (last answer - first request). The bound is
the limit divided by the mean tokens per request. A sliding window lets each minute's worth
go at once, so a run of a few minutes beats that bound: the ideal time is that of admitting
each minute's worth at the start of the minute (`ideal_s`); both ratios are printed.
Targets: (a) paced >= 0.9 of the bound with <= 2% turned away; (b) settled faster than
reserved.

    python benchmarks/token_limits.py [--images 480] [--itpm 36000] [--otpm-images 150]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from common import Endpoint, command, jpeg, rate

from pipeline.config import DEFAULT_PROMPT
from pipeline.endpoint.payloads import text_tokens
from pipeline.images.limits import load_catalog

HERE = Path(__file__).resolve().parent
LATENCY_MS, CAPACITY = 250, 16


def sizes(count: int) -> list[tuple[int, int]]:
    """Each photo its own size (distinct bytes: no answer is reused), about 500 x 480."""
    return [(480 + i % 41, 480 + i // 41) for i in range(count)]


def write_photos(folder: Path, count: int) -> list[tuple[int, int]]:
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes(count)):
        (folder / f"photo{i:04}.jpg").write_bytes(jpeg(w, h))
    return sizes(count)


def one_run(folder: Path, name: str, photos: Path, serve: list[str], run: list[str],
            program: tuple[str, ...] = ("-m", "pipeline.cli")) -> dict:
    with Endpoint(LATENCY_MS, CAPACITY, *serve) as endpoint:
        wall, out = command("run", *endpoint.flags(), "--input", str(photos), "--table",
                            str(folder / name / "captions"), "--max-concurrency",
                            str(CAPACITY), "--max-files-per-batch", "1000", *run,
                            cwd=folder, token=endpoint.token, program=program)
        stats = endpoint.stats()
    per_s, refused = rate(stats)
    held = next((line.strip() for line in out.splitlines() if "limits  requests" in line), "")
    completion = int(re.search(r"completion ([\d,]+)", out).group(1).replace(",", ""))
    return {"completion": completion, "per_s": per_s, "refused": refused,
            "turned": stats["by_status"].get("429", 0), "requests": stats["requests"],
            "ok": stats["answered_ok"], "wall": wall,
            "window": stats["last_answer_at"] - stats["first_request_at"], "held": held}


def ideal_s(costs: list[int], limit: int) -> float:
    """The shortest time from the first request to the last answer that a 60 s sliding window
    allows: each minute admits, at once, the requests that fit it (in order), and the last
    minute's requests take one latency to answer."""
    minutes, used = 0, 0
    for c in costs:
        if used + c > limit:
            minutes, used = minutes + 1, 0
        used += c
    return minutes * 60 + LATENCY_MS / 1000


def show(label: str, f: dict, bound_per_s: float, ideal_s: float) -> None:
    print(f"  {label:<28} {f['per_s']:6.2f}/s  {f['per_s'] / bound_per_s:5.2f} of bound  "
          f"{ideal_s / f['window']:5.2f} of ideal  {f['turned']:4d} of {f['requests']:4d} "
          f"turned away ({f['refused']:.1%})  requests {f['window']:6.1f} s  "
          f"command {f['wall']:6.1f} s")
    if f["held"]:
        print(f"  {'':<28} {f['held']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--itpm", type=int, default=36_000)
    parser.add_argument("--otpm-images", type=int, default=150)
    parser.add_argument("--otpm", type=int, default=6_000)
    parser.add_argument("--max-tokens", type=int, default=240)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vb-limits-"))
    shapes = write_photos(folder / "in", args.images)
    family = load_catalog().families["generic"]  # bench-vlm's family
    tokens = [text_tokens(DEFAULT_PROMPT) + family.image_tokens(w, h) for w, h in shapes]
    mean = sum(tokens) / len(tokens)
    bound = args.itpm / mean / 60
    ideal = ideal_s(tokens, args.itpm)
    print(f"{args.images} photos, {mean:.0f} input tokens per request; the endpoint allows "
          f"{args.itpm:,} input tokens a minute, answers in {LATENCY_MS} ms, {CAPACITY} at "
          f"once. Bound {bound:.2f} images/s; ideal {ideal:.0f} s of requests")
    serve = ["--max-itpm", str(args.itpm)]
    paced = one_run(folder, "paced", folder / "in", serve, ["--max-itpm", str(args.itpm)])
    show(f"--max-itpm {args.itpm}", paced, bound, ideal)
    aimd = one_run(folder, "aimd", folder / "in", serve, [])
    show("AIMD alone", aimd, bound, ideal)
    print(f"  paced / AIMD: {paced['per_s'] / aimd['per_s']:.2f}x images/s, "
          f"{aimd['wall'] / paced['wall']:.2f}x shorter command; answered "
          f"{paced['ok']} and {aimd['ok']} of {args.images}")

    # (b) OTPM: the first photos; the local model's answers are about 57 tokens.
    small = folder / "in-otpm"
    small.mkdir()
    for i in range(args.otpm_images):
        (small / f"photo{i:04}.jpg").write_bytes((folder / "in" / f"photo{i:04}.jpg")
                                                  .read_bytes())
    serve = ["--max-otpm", str(args.otpm)]
    run = ["--max-otpm", str(args.otpm), "--max-tokens", str(args.max_tokens)]
    settled = one_run(folder, "settled", small, serve, run)
    reserved = one_run(folder, "reserved", small, serve, run,
                       program=(str(HERE / "reserved_output.py"),))
    answer = settled["completion"] / args.otpm_images  # mean output tokens per answer
    ideal = ideal_s([round(answer)] * args.otpm_images, args.otpm)
    reserved_bound = args.otpm / args.max_tokens / 60
    print(f"{args.otpm_images} photos; the endpoint allows {args.otpm:,} output tokens a "
          f"minute; --max-tokens {args.max_tokens}, answers use {answer:.0f} on average")
    show("settled with the usage", settled, args.otpm / answer / 60, ideal)
    show("reserved for good", reserved, args.otpm / answer / 60, ideal)
    print(f"  settled / reserved: {settled['per_s'] / reserved['per_s']:.2f}x images/s, "
          f"{reserved['wall'] / settled['wall']:.2f}x shorter command (reserving for good "
          f"caps it at {reserved_bound:.2f} images/s)")


if __name__ == "__main__":
    main()
