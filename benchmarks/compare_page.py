"""The compare page at its documented size: 500 images x 4 (endpoint, prompt) pairs.

Rows as a run writes them (a caption of about 60 words per pair) and real thumbnails (made
by the report's own code from 1,000 x 750 photos) go through `render_compare`; the page is
then opened in headless Chromium (Debian's, as the browser tests use). Printed: the page's
size and the time from navigation to every thumbnail decoded. Targets: under 10 MB and
under 5 s.

    python benchmarks/compare_page.py [--images 500] [--pairs 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import jpeg
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from pipeline.images.limits import load_catalog
from pipeline.report.compare import Pair, render_compare
from pipeline.report.thumbnails import preview


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()

    pairs = [Pair(f"databricks-model-{i}", f"prompt{i:02}") for i in range(args.pairs)]
    catalog = load_catalog()
    thumbs = {f"/Volumes/main/raw/photos/{n:05}.jpg":
              preview(jpeg(1000 - n % 200, 750 - n % 150), catalog.input.max_pixels)
              for n in range(args.images)}
    rows = [{"path": path, "endpoint": p.endpoint, "prompt_id": p.prompt_id, "status": "ok",
             "error_class": None, "caption": f"Photo {n} as {p.endpoint} sees it: " +
             " ".join(f"word{(n * 7 + k * (i + 1)) % 97}" for k in range(60)),
             "response_json": None, "prompt_tokens": 1200 + n % 300, "completion_tokens": 80,
             "attempts": 1, "latency_ms": 900 + n % 400}
            for n, path in enumerate(thumbs) for i, p in enumerate(pairs)]
    started = time.perf_counter()
    html = render_compare(rows, pairs, [], thumbs, catalog, "main.vision.captions",
                          max_images=args.images)
    built = time.perf_counter() - started
    out = Path(tempfile.mkdtemp(prefix="vb-compare-")) / "compare.html"
    out.write_text(html, encoding="utf-8")

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"),
                              options=options)
    try:
        started = time.perf_counter()
        driver.get(out.as_uri())
        loaded = driver.execute_async_script(
            "var done = arguments[0];"
            "Promise.all(Array.from(document.images).map(function (i) { return i.decode(); }))"
            ".then(function () { done(document.images.length); });")
        rendered = time.perf_counter() - started
        rows_shown = len(driver.find_elements("css selector", "table.grid tbody tr"))
    finally:
        driver.quit()
    print(f"{args.images} images x {args.pairs} pairs: page {out.stat().st_size / 1e6:.2f} MB "
          f"(target < 10 MB), built in {built:.2f} s, rendered with {loaded} thumbnails "
          f"decoded in {rendered:.2f} s (target < 5 s); {rows_shown} rows in the grid")


if __name__ == "__main__":
    main()
