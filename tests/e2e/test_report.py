"""`vision-batch report` on a real local run, opened in headless Chromium.

Chromium and its driver are Debian's (`chromium`, `chromium-driver`; .ci/run installs them).
Selenium is pointed at both binaries, so Selenium Manager never downloads anything. Without
them the browser test is skipped, unless VISION_BATCH_REQUIRE_BROWSER=1 (CI) makes it fail.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline import cli, report
from pipeline import runs as runner
from pipeline.images.limits import load_catalog
from pipeline.local.faults import Faults
from pipeline.report.thumbnails import THUMBNAIL_SIDE
from tests import files

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("VISION_BATCH_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browser_or_skip(tmp_path: Path):
    """A headless Chromium driven by Selenium, or a skip (a failure when it is required)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = "no browser for the report test: missing " + ", ".join(missing) + \
            " (apt-get install chromium chromium-driver)"
        if os.environ.get("VISION_BATCH_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The background-networking flags keep Chromium from calling home on a closed network.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def full_page_png(driver) -> bytes:
    """The whole page, not just the window: Chromium's DevTools capture beyond the viewport."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000),
            "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": clip})
    return base64.b64decode(shot["data"])


def visible_cards(driver) -> list:
    return [c for c in driver.find_elements("css selector", ".card") if c.is_displayed()]


def check_page(driver, out: Path, rows: dict[str, dict]) -> None:
    """The page shows every row of the table as a card with its status; ok cards have a
    loaded thumbnail and the table's caption; the filters show what they say."""
    driver.get(out.as_uri())
    cards = driver.find_elements("css selector", ".card")
    assert len(cards) == len(rows)
    by_path = {c.find_element("css selector", ".name").get_attribute("title"): c
               for c in cards}
    assert set(by_path) == set(rows)
    for path, row in rows.items():
        card = by_path[path]
        assert card.get_attribute("data-status") == row["status"]
        if row["status"] != "ok":
            continue
        img = card.find_element("css selector", ".thumb img")
        width = driver.execute_script(
            "return arguments[0].complete ? arguments[0].naturalWidth : 0", img)
        assert 0 < width <= THUMBNAIL_SIDE, path
        caption = card.find_element("css selector", ".caption").get_attribute("textContent")
        assert caption and caption == row["caption"]
    # Failed rows were sent: their thumbnails load too.
    failed = [by_path[p] for p, r in rows.items() if r["status"] == "failed"]
    assert all(c.find_elements("css selector", ".thumb img") for c in failed)

    driver.find_element("css selector", '[data-filter="invalid"]').click()
    shown = visible_cards(driver)
    invalid = [r for r in rows.values() if r["status"] == "invalid"]
    assert [c.get_attribute("data-status") for c in shown] == ["invalid"]
    reason = shown[0].find_element("css selector", ".reason").text
    assert reason == f"{invalid[0]['error_class']}: {invalid[0]['error_message']}"
    assert driver.find_element("id", "visible").text == "1"

    driver.find_element("css selector", '[data-filter="failed"]').click()
    assert {c.get_attribute("data-status") for c in visible_cards(driver)} == {"failed"}
    assert all("server_error" in c.text for c in visible_cards(driver))

    driver.find_element("css selector", '[data-filter="all"]').click()
    assert len(visible_cards(driver)) == len(rows)


def test_the_report_of_a_real_run_renders_every_row_and_filters_by_status(
    spark, serve, run_config, tmp_path, capsys
) -> None:
    driver = browser_or_skip(tmp_path)  # before the run: a skip costs nothing
    try:
        folder = files.write_photos(tmp_path / "in", 8, "photo {}.jpg",
                                    lambda i: (48 + 16 * i, 40 + 4 * i))
        (folder / "notes.jpg").write_bytes(b"meeting notes, <b>not</b> a picture\n")
        # Half the requests fail with HTTP 500, decided by the request body and the seed, and
        # there is one attempt each: failed rows next to ok ones, the same on every run.
        _, credentials = serve(Faults(rate_500=0.5, seed=7))
        cfg = run_config(folder, max_attempts=1)
        done = runner.run(cfg, credentials, spark, progress=lambda _: None)

        rows = {r["path"]: r.asDict() for r in spark.read.format("delta").load(cfg.table)
                .collect()}
        counts = Counter(r["status"] for r in rows.values())
        assert counts["invalid"] == 1 and counts["ok"] >= 1 and counts["failed"] >= 1, counts
        assert len(rows) == 9

        out = tmp_path / "report" / "report.html"
        assert cli.main(["report", "--table", cfg.table, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert str(out) in printed and "all 9 rows shown" in printed and " MB" in printed
        text = out.read_text(encoding="utf-8")
        assert "://" not in text  # self-contained: nothing to fetch

        check_page(driver, out, rows)
        shot = artifacts_dir() / "report.png"
        shot.write_bytes(full_page_png(driver))
        assert shot.stat().st_size > 10_000
        shutil.copy(out, artifacts_dir() / "report.html")
    finally:
        driver.quit()

    # A run id the table does not know is one line and exit 1, not an empty page.
    assert cli.main(["report", "--table", cfg.table, "--out", str(tmp_path / "x.html"),
                     "--run-id", "no-such-run"]) == 1
    assert "--run-id no-such-run: no such run" in capsys.readouterr().err
    assert done.run_id in text


def test_files_gone_changed_or_undecodable_get_placeholders_not_errors(spark, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    kept, gone, junk = folder / "kept.jpg", folder / "gone.jpg", folder / "junk.jpg"
    kept.write_bytes(files.jpeg(80, 60))
    junk.write_bytes(files.pdf())
    kept, gone, junk = (f"file:{p}" for p in (kept, gone, junk))  # as binaryFile lists them
    rows = [{"path": p, "status": "ok", "size_bytes": 10} for p in (kept, gone, junk)]
    previews = report.read_previews(spark, rows, load_catalog().input)
    assert previews[kept].jpeg and previews[kept].sha256
    assert previews[gone] == report.Preview(None, None, "file not found")
    assert previews[junk].jpeg is None and "does not decode" in previews[junk].note
