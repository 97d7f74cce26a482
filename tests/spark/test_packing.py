"""`images_per_request`: a whole run packing K images per request, on a real Delta table."""

from __future__ import annotations

import pytest

from pipeline import runs as runner
from pipeline.config import ConfigError
from tests import files


def test_packed_run_puts_every_caption_on_its_own_row(spark, serve, run_config, tmp_path):
    folder = files.write_photos(tmp_path / "in", 11, "p{:02d}.jpg", lambda i: (60 + 3 * i, 40))
    (folder / "notes.txt").write_text("not an image")
    endpoint, creds = serve()
    cfg = run_config(folder, images_per_request=5, max_concurrency=2)
    result = runner.run(cfg, creds, spark, progress=lambda _: None)

    stats = endpoint.stats()
    # 11 images in packs of at most 5: at least 3 requests, far fewer than 11.
    assert 3 <= stats["requests"] <= 6 and stats["images"] == 11
    assert stats["rejected_400"] == 0
    rows = {r.path.rsplit("/", 1)[-1]: r
            for r in spark.read.format("delta").load(cfg.table).collect()}
    assert len(rows) == 12 and rows["notes.txt"].status == "invalid"
    for i in range(11):
        row = rows[f"p{i:02d}.jpg"]
        # The local model writes each image's own size: the caption is on the right row.
        assert row.status == "ok" and f"{60 + 3 * i}x40 pixels" in row.caption
        assert row.total_tokens > 0
        # Shared usage for a packed image; a pack of one (a partition's last image) pays alone.
        alone = row.request_share == 1.0
        assert row.usage_source == ("endpoint" if alone else "apportioned")
    assert sum(r.usage_source == "apportioned" for r in rows.values()) >= 8
    shares = sum(r.request_share for r in rows.values())
    assert round(shares) == stats["requests"] == result.requests


def test_more_images_per_request_than_the_model_takes_is_a_usage_error(
    spark, serve, run_config, tmp_path
):
    folder = files.write_photos(tmp_path / "in", 1, "p{}.jpg", lambda i: (30, 20))
    _, creds = serve()
    with pytest.raises(ConfigError, match="at most 5 images per request"):
        runner.run(run_config(folder, images_per_request=6), creds, spark,
                   progress=lambda _: None)
