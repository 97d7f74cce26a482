"""The report page from plain data: escaping, filter markup, sampling, size, charts, cost."""

from __future__ import annotations

import html
import io
import os
import re
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image

from pipeline import report
from pipeline.images.limits import LimitsError, load_catalog, parse_catalog
from pipeline.percentiles import percentile, percentile_of_counts
from pipeline.report.charts import bin_counts, bins, time_buckets
from pipeline.report.page import PAGE_BUDGET_BYTES
from pipeline.report.sampling import quotas, tally
from pipeline.report.thumbnails import THUMBNAIL_SIDE, Preview, preview, thumbnail
from pipeline.report.totals import costs
from tests import files

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def row(i: int, status: str = "ok", **extra) -> dict:
    base = {
        "path": f"file:/data/in/img{i:05}.jpg", "endpoint": "local-reference",
        "prompt_id": "p1", "status": status, "run_id": "r1", "processed_at": T0,
        "format": "JPEG", "width": 64, "height": 48, "size_bytes": 1000,
        "content_sha256": None, "error_class": None, "error_message": None, "caption": None,
        "attempts": 0, "latency_ms": None, "prompt_tokens": None, "completion_tokens": None,
        "total_tokens": None, "estimated_image_tokens": None, "reused_from": None,
    }
    if status == "ok":
        base.update(caption=f"caption {i}", attempts=1, latency_ms=100 + i % 50,
                    prompt_tokens=500, completion_tokens=50, total_tokens=550,
                    estimated_image_tokens=5)
    elif status == "invalid":
        base.update(error_class="not_an_image", error_message="The bytes are not an image.")
    else:
        base.update(error_class="server_error", error_message="HTTP 500.", attempts=2,
                    latency_ms=900)
    base.update(extra)
    return base


def cards(page_html: str) -> list[str]:
    return re.findall(r'<article class="card" data-status="([^"]*)"', page_html)


def render(rows, **kw) -> report.Page:
    kw.setdefault("scope", report.Scope("/t/captions", generated_at=T0))
    return report.render_report(rows, **kw)


def test_hostile_captions_messages_and_paths_are_escaped_and_nothing_is_fetched() -> None:
    rows = [row(0, caption=HOSTILE), row(1, "failed", error_message=HOSTILE,
                                       error_class="<b>x</b>"),
            row(2, path="file:/in/" + HOSTILE + ".jpg", group_key=HOSTILE)]
    text = render(rows).html
    assert "<script>alert" not in text and "<img src=x" not in text
    assert html_unescape_count(text, HOSTILE) == 4  # caption, message, path title, group
    assert "&lt;b&gt;x&lt;/b&gt;" in text
    # One script (ours), allowed by hash; no URL of any kind anywhere on the page.
    assert text.count("<script>") == 1 and "innerHTML" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in html.unescape(text)
    assert "://" not in text and " src=\"http" not in text


def html_unescape_count(text: str, needle: str) -> int:
    return text.count(html.escape(needle, quote=True))


def test_every_card_carries_its_status_and_the_filter_has_a_button_per_status() -> None:
    rows = [row(0), row(1, "invalid"), row(2, "failed"), row(3)]
    text = render(rows).html
    assert sorted(cards(text)) == ["failed", "invalid", "ok", "ok"]
    for status in ("all", "ok", "invalid", "failed"):
        assert f'data-filter="{status}"' in text
    # Problems first, so a reader sees them without filtering.
    assert cards(text)[:2] == ["failed", "invalid"]
    assert '<span class="class">not_an_image</span>: The bytes are not an image.' in text
    assert '<p class="caption">caption 0</p>' in text
    assert "Showing all 4 rows." in text


def test_a_missing_or_undecodable_thumbnail_is_a_placeholder() -> None:
    jpeg = thumbnail(files.jpeg(64, 48), 10**8)
    rows = [row(0), row(1), row(2, content_sha256="a" * 64), row(3, "invalid")]
    previews = {rows[0]["path"]: jpeg,
                rows[1]["path"]: preview(None, 10**8),
                rows[2]["path"]: Preview(jpeg, "b" * 64)}
    text = render(rows, previews=previews).html
    assert text.count('<img src="data:image/jpeg;base64,') == 1
    assert "file not found" in text and "file changed since it was captioned" in text
    assert text.count('class="placeholder"') == 3
    assert render(rows, previews=previews).thumbnails == 1


def test_thumbnails_are_small_oriented_rgb_jpegs_or_none() -> None:
    bounds = load_catalog().input
    for data in (files.jpeg(4000, 3000), files.cmyk_jpeg(), files.png_16bit(),
                 files.png_alpha(), files.png_palette_transparent(), files.animated_gif(),
                 files.tiff_scan(), files.bmp(), files.webp()):
        thumb = thumbnail(data, bounds.max_pixels)
        with Image.open(io.BytesIO(thumb)) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert max(img.size) <= THUMBNAIL_SIDE
    with Image.open(io.BytesIO(thumbnail(files.rotated_jpeg(80, 40), 10**8))) as img:
        assert img.size == (40, 80)  # EXIF orientation applied: portrait
    for junk in (b"", files.pdf(), files.truncated_jpeg(), files.png_bomb(), files.svg()):
        assert thumbnail(junk, bounds.max_pixels) is None
    assert len(thumbnail(files.jpeg(4000, 3000), bounds.max_pixels)) < 12_000


def _photo_thumbnails() -> list[bytes]:
    """Thumbnails of real photos (the samples), plus noise, the worst case for JPEG."""
    from pipeline.resources import samples_dir

    thumbs = [thumbnail(p.read_bytes(), 10**8)
              for p in sorted(samples_dir().glob("*.jpg"))]
    noise = Image.frombytes("RGB", (200, 150), os.urandom(200 * 150 * 3))
    thumbs.append(thumbnail(files.encode(noise, "JPEG", quality=95), 10**8))
    return thumbs


def test_5000_rows_make_a_sampled_page_well_under_20_mb_that_still_counts_every_row() -> None:
    thumbs = _photo_thumbnails()
    statuses = ["ok"] * 8 + ["invalid", "failed"]
    rows = [row(i, statuses[i % 10], caption="A long caption. " * 20,
                processed_at=T0 + timedelta(seconds=i // 500 * 30)) for i in range(5000)]
    previews = {r["path"]: thumbs[i % len(thumbs)] for i, r in enumerate(rows)}
    page = render(rows, previews=previews)
    size = len(page.html.encode())
    assert size < 20_000_000
    assert (page.rows, page.shown, page.thumbnails) == (5000, 1000, 1000)
    assert "Showing 1,000 of 5,000 rows, sampled: 250 of 500 failed, 250 of 500 invalid, " \
           "500 of 4,000 ok" in page.html
    assert "count every row" in page.html
    assert '<div class="value">5,000</div>' in page.html  # the header counts all rows
    assert sorted(set(cards(page.html))) == ["failed", "invalid", "ok"]
    print(f"5000 rows: {size / 1e6:.1f} MB")


def test_thumbnails_stop_before_the_page_passes_its_budget() -> None:
    big = b"\xff\xd8" + os.urandom(60_000)  # 60 KB each: 1000 of them would be 80 MB
    rows = [row(i) for i in range(1000)]
    page = render(rows, previews={r["path"]: big for r in rows})
    assert len(page.html.encode()) <= PAGE_BUDGET_BYTES
    assert 0 < page.thumbnails < 1000 and "left out to keep the page under" in page.html


def test_an_empty_table_renders_with_no_data_in_every_chart() -> None:
    text = render([]).html
    assert text.count('<div class="nodata">no data</div>') == 4
    assert "No rows to show." in text and cards(text) == []
    assert "no run recorded" in text


def test_charts_render_axes_and_labels() -> None:
    rows = [row(i, "ok" if i % 4 else "failed",
                processed_at=T0 + timedelta(seconds=i)) for i in range(40)]
    text = render(rows).html
    assert text.count("<svg") == 4 and "no data" not in text
    for label in ("latency of the successful (or last) attempt, ms", "rows per 1 s",
                  "processed_at (UTC), 1 s buckets", "server_error", "total tokens per request"):
        assert label in text


def test_cost_counts_paid_rows_only_and_only_where_a_price_is_configured() -> None:
    raw = _catalog_raw()
    raw["families"]["claude"]["price"] = {
        "input_per_million": 3.0, "output_per_million": 15.0, "currency": "USD",
        "source": "test figure"}
    catalog = parse_catalog(raw)
    rows = [row(0, endpoint="databricks-claude-x", prompt_tokens=1000, completion_tokens=100,
                total_tokens=1100),
            # Same bytes as row 0: the usage is repeated but nothing was paid.
            row(1, endpoint="databricks-claude-x", attempts=0, prompt_tokens=1000,
                completion_tokens=100, total_tokens=1100, reused_from="file:/data/in/img0.jpg"),
            row(2, endpoint="my-own-model", prompt_tokens=2000, completion_tokens=200,
                total_tokens=2200)]
    totals, _ = tally(rows, 10)
    by_family = {c.family: c for c in costs(totals.paid, catalog)}
    assert by_family["claude"].usage.total_tokens == 1100
    assert by_family["claude"].cost == pytest.approx((1000 * 3 + 100 * 15) / 1e6)
    assert by_family["generic"].cost is None
    text = render(rows, catalog=catalog).html
    assert "0.0045 USD" in text and "no price configured" in text
    assert "test figure" in text and "1 reused answers not paid" in text
    assert '<div class="value">3,300</div>' in text  # tokens paid: rows 0 and 2


def _catalog_raw() -> dict:
    import yaml

    from pipeline.resources import conf_dir

    return yaml.safe_load((conf_dir() / "models.yml").read_text())


@pytest.mark.parametrize("price, key", [
    ({"input_per_million": 1, "currency": "USD", "source": "s"}, "price.output_per_million"),
    ({"input_per_million": -1, "output_per_million": 1, "currency": "USD", "source": "s"},
     "price.input_per_million"),
    ({"input_per_million": 1, "output_per_million": 1, "currency": "USD"}, "price.source"),
    ({"input_per_million": 1, "output_per_million": 1, "currency": "USD", "source": "s",
      "per_image": 2}, "price.per_image"),
    ("cheap", "families.gemma3.price"),
])
def test_a_bad_price_is_an_error_naming_the_key(price, key) -> None:
    raw = _catalog_raw()
    raw["families"]["gemma3"]["price"] = price
    with pytest.raises(LimitsError, match=re.escape(key)):
        parse_catalog(raw)


def test_no_family_ships_with_an_invented_price() -> None:
    assert all(f.price is None for f in load_catalog().families.values())


def test_quotas_fill_the_limit_and_represent_every_status() -> None:
    assert quotas({"ok": 3, "failed": 1}, 10) == {"ok": 3, "failed": 1}
    q = quotas({"ok": 5000, "invalid": 10, "failed": 3000}, 1000)
    assert q == {"failed": 490, "invalid": 10, "ok": 500}
    q = quotas({"ok": 20, "invalid": 2000, "failed": 2000}, 1000)
    assert q["ok"] == 20 and q["failed"] + q["invalid"] == 980
    assert sum(quotas({"ok": 7, "invalid": 7, "failed": 7}, 10).values()) == 10


def test_the_sample_is_deterministic_and_bounded() -> None:
    rows = [row(i, ("ok", "ok", "invalid", "failed")[i % 4]) for i in range(400)]
    first = tally(rows, 50)[1]
    again = tally(reversed(rows), 50)[1]
    assert first == again and len(first) == 50


def test_bins_put_a_long_tail_in_one_overflow_bin() -> None:
    values = [100 + i for i in range(200)] + [120_000]
    b = bins(values)
    assert b.overflow and b.edges[-1] < 1000
    assert sum(bin_counts(values, b)) == len(values)
    assert bin_counts(values, b)[-1] == 1
    assert percentile([5, 1, 3], 0.5) == 3 and percentile([], 0.5) is None


def test_the_percentile_of_counts_is_the_percentile_of_the_values() -> None:
    values = [7, 3, 3, 120, 45, 45, 45, 9, 1000, 3]
    counts = Counter(values)
    for q in (0.01, 0.5, 0.9, 0.95, 1.0):
        assert percentile_of_counts(counts, q) == percentile(values, q)
    assert percentile_of_counts(Counter(), 0.5) is None


def test_time_buckets_count_every_row() -> None:
    processed = {T0: 10, T0 + timedelta(minutes=3): 5, T0 + timedelta(hours=2): 1}
    start, width, counts = time_buckets(processed)
    assert sum(counts) == 16 and len(counts) <= 40 and width == 300
    assert start <= T0


def test_group_key_shows_when_the_column_exists() -> None:
    text = render([row(0, group_key="album-7"), row(1)]).html
    assert 'group <span class="group">album-7</span>' in text
    assert text.count('class="group"') == 1


def test_a_request_shared_by_packed_images_counts_once() -> None:
    # Five images answered by one packed request: each row took part in it (attempts 1) and
    # accounts for a fifth of it; a row from before request_share counts its attempts.
    rows = [row(i, request_share=0.2) for i in range(5)] + [row(5, attempts=2)]
    totals, _ = tally(rows, 10)
    assert totals.paid_total().requests == pytest.approx(3)
    assert "6 rows with requests (3 requests)" in render(rows).html


def test_the_report_shows_the_answers_cut_off_refused_or_off_schema_per_endpoint_and_prompt(
) -> None:
    bad = {"cut_off": 3, "refused": 1, "schema_mismatch": 2}
    rows = [row(i, finish_reason="stop") for i in range(14)] + [row(100, "invalid")]
    i = 200
    finish = {"cut_off": "length", "refused": "content_filter", "schema_mismatch": None}
    for error_class, count in bad.items():
        for _ in range(count):
            rows.append(row(i, "failed", error_class=error_class, error_message="no caption",
                            finish_reason=finish[error_class]))
            i += 1
    rows += [row(300 + k, prompt_id="p2") for k in range(4)]
    run = {"run_id": "r1", "started_at": T0, "status": "succeeded", "ok": 18, "failed": 6,
           "cut_off": 3}
    page = render(rows, runs=[run]).html
    section = page[page.index("<h2>Answers checked</h2>"):page.index("<h2>Runs</h2>")]
    runs_html = page[page.index("<h2>Runs</h2>"):page.index("<h2>Charts</h2>")]
    assert "<th>failed</th><th>cut off</th>" in runs_html and "<td>6</td><td>3</td>" in runs_html
    lines = re.findall(r"<tr><td class='l ep'>([^<]+)</td><td class='l'><code>([^<]+)</code>"
                       r"</td><td>([^<]+)</td>(.*?)</tr>", section)
    cells = {(ep, prompt): (sent, re.findall(r"<td[^>]*>([^<]+)</td>", rest))
             for ep, prompt, sent, rest in lines}
    # Of the 20 rows p1 sent (the invalid one was not): 3 cut off, 1 refused, 2 off schema.
    assert cells[("local-reference", "p1")] == (
        "20", ["3 (15.0%)", "1 (5.0%)", "2 (10.0%)",
               "stop 14 · length 3 · content_filter 1"])
    assert cells[("local-reference", "p2")] == ("4", ["0 (0.0%)"] * 3 + ["–"])
    assert section.count('class="bad"') == 3
