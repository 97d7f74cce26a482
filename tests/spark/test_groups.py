"""`--group-by`: a folder of product sub-folders, one answer per product, one row per file."""

from __future__ import annotations

from pipeline import runs as runner
from tests import files


def product_folder(root):
    """Products A (3 photos), B (7: past the 5 images one request may carry), C (a photo and
    a text file) and D (nothing that can be sent)."""
    sizes = {"A": 3, "B": 7, "C": 1}
    for n, (product, count) in enumerate(sizes.items()):
        files.write_photos(root / f"sku-{product}", count, "view{}.jpg",
                           lambda i, n=n: (50 + 10 * n + i, 30 + n))
    (root / "sku-C" / "notes.txt").write_text("care label")
    (root / "sku-D").mkdir()
    (root / "sku-D" / "empty.jpg").write_bytes(b"")
    (root / "sku-D" / "scan.pdf").write_bytes(files.pdf())
    return root


def test_one_answer_per_product_and_one_row_per_file(spark, serve, run_config, tmp_path):
    folder = product_folder(tmp_path / "in")
    endpoint, creds = serve()
    cfg = run_config(folder, group_by="folder")
    result = runner.run(cfg, creds, spark, progress=lambda _: None)

    stats = endpoint.stats()
    assert stats["requests"] == 4 and stats["images"] == 11 and stats["rejected_400"] == 0
    grouped = {r.group_key.rsplit("/", 1)[-1]: r
               for r in spark.read.format("delta").load(cfg.table + "_groups").collect()}
    assert set(grouped) == {"sku-A", "sku-B", "sku-C", "sku-D"}
    a, b, c, d = (grouped[f"sku-{p}"] for p in "ABCD")
    assert (a.status, a.parts, a.images, len(a.member_paths)) == ("ok", 1, 3, 3)
    # The local model numbers the images it was sent: all three of A, in one request.
    assert [f"Image {i}:" in a.answer for i in (1, 2, 3, 4)] == [True, True, True, False]
    assert "50x30 pixels" in a.answer and "52x30 pixels" in a.answer
    # B holds 7 images and the model takes 5 per request: split, and the row says so.
    assert (b.status, b.parts, b.images) == ("ok", 2, 7)
    assert b.answer.startswith("Part 1 of 2 (5 images)") and "Part 2 of 2 (2 images)" in b.answer
    assert b.attempts == 2 and len(b.part_answers) == 2
    # C: the text file is a member, left out of the request.
    assert (c.status, c.images, len(c.member_paths)) == ("ok", 1, 2)
    assert (d.status, d.error_class, d.attempts) == ("invalid", "no_valid_image", 0)

    rows = {r.path.split("/in/")[1]: r
            for r in spark.read.format("delta").load(cfg.table).collect()}
    assert len(rows) == 14
    assert all(r.group_key == r.path.rsplit("/", 1)[0] for r in rows.values())
    assert rows["sku-C/notes.txt"].status == "invalid"
    assert rows["sku-D/empty.jpg"].error_class == "empty_file"
    assert rows["sku-A/view0.jpg"].status == "ok" and rows["sku-A/view0.jpg"].caption is None
    for key, group in grouped.items():  # members' shares add up to what the group cost
        members = [r for r in rows.values() if r.group_key == group.group_key]
        paid = sum(r.total_tokens or 0 for r in members)
        assert paid == (group.total_tokens or 0), key
    assert result.statuses == {"ok": 11, "invalid": 3} and result.requests == 4

    again = runner.run(cfg, creds, spark, progress=lambda _: None)
    assert endpoint.stats()["requests"] == 4  # nothing asked twice
    assert again.skipped == again.listed == 14


def test_files_outside_every_group_are_recorded_not_dropped(spark, serve, run_config,
                                                            tmp_path):
    folder = tmp_path / "in"
    files.write_photos(folder, 4, "sku-{}-front.jpg", lambda i: (40 + i, 30))
    files.write_photos(folder, 1, "logo{}.jpg", lambda i: (20, 20))
    endpoint, creds = serve()
    cfg = run_config(folder, group_by=r"sku-(\d+)-")
    runner.run(cfg, creds, spark, progress=lambda _: None)
    rows = {r.path.rsplit("/", 1)[-1]: r
            for r in spark.read.format("delta").load(cfg.table).collect()}
    assert rows["logo0.jpg"].status == "invalid" and rows["logo0.jpg"].error_class == "no_group"
    assert {rows[f"sku-{i}-front.jpg"].group_key for i in range(4)} == {"0", "1", "2", "3"}
    assert endpoint.stats()["requests"] == 4
