"""`--mode sql --group-by`: sql/caption_groups.sql writes the groups table the UDF path writes,
with the same keys and fingerprints, so each path skips the groups the other has done."""

from __future__ import annotations

import math
from dataclasses import replace

from pipeline import notebook
from pipeline import runs as runner
from pipeline.endpoint.prompt_ids import FOLDER_PATTERN
from pipeline.resources import sql_text
from pipeline.runs import sql as sql_path
from pipeline.tables import sink
from tests import files
from tests.spark.test_groups import product_folder

SAME_ON_BOTH = ("fingerprint", "member_paths", "images", "parts", "status", "error_class")


def groups_of(spark, table: str) -> dict:
    rows = spark.read.format("delta").load(table + "_groups").collect()
    return {r.group_key.rsplit("/", 1)[-1]: r for r in rows}


def test_both_paths_write_the_same_groups_and_skip_each_others(
    spark, serve, run_config, tmp_path
) -> None:
    folder = product_folder(tmp_path / "in")
    # E: five photos and a truncated JPEG. The UDF path decodes it (corrupt_image) and asks
    # about the five in one request; SQL cannot decode, sends it as a sixth image in a second
    # part, and the endpoint refuses that part: the one group the paths see differently.
    files.write_photos(tmp_path / "in" / "sku-E", 5, "view{}.jpg", lambda i: (90 + i, 40))
    (tmp_path / "in" / "sku-E" / "view5.jpg").write_bytes(files.truncated_jpeg())
    endpoint, creds = serve()
    udf = run_config(folder, group_by="folder", table=str(tmp_path / "udf" / "captions"))
    sql = replace(udf, mode="sql", table=str(tmp_path / "sql" / "captions"))

    runner.run(udf, creds, spark, progress=lambda _: None)
    assert endpoint.stats()["requests"] == 5  # A, B (two parts), C, E
    result = runner.run(sql, creds, spark, progress=lambda _: None)
    stats = endpoint.stats()
    assert stats["requests"] == 5 + 6 and stats["rejected_400"] == 1  # E's second part

    by_udf, by_sql = groups_of(spark, udf.table), groups_of(spark, sql.table)
    assert set(by_udf) == set(by_sql) == {f"sku-{p}" for p in "ABCDE"}
    for key in "ABCD":
        a, b = by_udf[f"sku-{key}"], by_sql[f"sku-{key}"]
        assert a.group_key == b.group_key, key
        assert [a[c] for c in SAME_ON_BOTH] == [b[c] for c in SAME_ON_BOTH], key
        # Small RGB JPEGs are sent as they are on both paths: the same bytes, the same answers.
        assert (a.answer, a.part_answers) == (b.answer, b.part_answers), key
        assert (b.endpoint, b.prompt_id) == (a.endpoint, a.prompt_id)
    a, b, c, d = (by_sql[f"sku-{p}"] for p in "ABCD")
    assert (a.status, a.parts, a.images, a.attempts) == ("ok", 1, 3, 1)
    assert (b.status, b.parts, b.images, b.attempts) == ("ok", 2, 7, 2)
    assert b.answer.startswith("Part 1 of 2 (5 images): ") and "\n\nPart 2 of 2 (2 images): " \
        in b.answer
    assert (c.status, c.images, len(c.member_paths)) == ("ok", 1, 2)  # notes.txt: a member
    assert (d.status, d.error_class, d.parts, d.attempts, d.answer) == (
        "invalid", "no_valid_image", 0, 0, None)
    assert d.error_message.startswith("No member of the group is an image")

    e_udf, e = by_udf["sku-E"], by_sql["sku-E"]
    assert e_udf.fingerprint == e.fingerprint and e_udf.member_paths == e.member_paths
    assert (e_udf.status, e_udf.images, e_udf.parts) == ("ok", 5, 1)
    assert (e.status, e.error_class, e.images, e.parts, e.attempts) == (
        "failed", "rejected", 6, 2, 2)
    assert "HTTP 400" in e.error_message and e.error_message.endswith(" (part 2 of 2)")
    assert e.answer is None and e.part_answers[0] and e.part_answers[1] is None
    # Estimated for the part that answered only: five images and the prompt, then its answer.
    params = sql_path.group_parameters(runner.context(sql, creds, sink.Tables("t", "r")))
    prompt = params["image_tokens"] * 5 + math.ceil(len(params["prompt"]) / 4)
    assert (e.prompt_tokens, e.usage_source) == (prompt, "estimated")
    assert e.completion_tokens == math.ceil(len(e.part_answers[0]) / 4)
    for row in by_sql.values():
        assert row.run_id == result.run_id and row.latency_ms is None and row.response_json is None

    # Only the groups table: no member rows; the run counts files by their group's status.
    assert spark.read.format("delta").load(sql.table).count() == 0
    assert result.statuses == {"ok": 12, "invalid": 2, "failed": 6} and result.requests == 6
    assert result.skipped == 0
    [run] = spark.read.format("delta").load(sql.table + "_runs").collect()
    assert (run.mode, run.status, run.ok, run.invalid, run.failed, run.requests) == (
        "sql", "succeeded", 12, 2, 6, 6)

    # The SQL path over the UDF path's tables: every group is recorded with its fingerprint
    # (the same fingerprints as the SQL path's, above), so nothing is asked again.
    again = runner.run(replace(udf, mode="sql"), creds, spark, progress=lambda _: None)
    assert endpoint.stats()["requests"] == 11
    assert (again.written, again.skipped, again.listed) == (0, 20, 20)


def test_the_group_template_repeats_caption_files_refusals_verbatim() -> None:
    def refusals(name: str) -> str:  # the sniffed and checked CTEs
        text = sql_text(name)
        return text[text.index("  sniffed AS ("):text.index("    FROM sniffed\n")]

    def classification(name: str) -> list[str]:
        text = sql_text(name)
        block = text[text.index("WHEN failure IS NULL"):text.index("ELSE 'server_error'")]
        return [line.strip() for line in block.splitlines()]

    assert refusals("caption_groups.sql") == refusals("caption_files.sql")
    assert classification("caption_groups.sql") == classification("caption_files.sql")


def test_the_group_template_merges_like_merge_groups() -> None:
    def clauses(name: str) -> list[str]:  # the ON condition and the WHEN clauses
        text = sql_text(name)
        tail = text[text.index("ON t.group_key"):].strip().splitlines()
        # A batch MERGE also bounds the keys it reads; the template merges a whole run at once.
        return [line for line in tail
                if not line.startswith("--") and "BETWEEN :first_key" not in line]

    assert clauses("caption_groups.sql") == clauses("merge_groups.sql")


def test_every_marker_of_the_group_template_is_bound(run_config, tmp_path) -> None:
    tables = sink.Tables("c", "c_runs")
    cfg = run_config(tmp_path, mode="sql", group_by=r"/(sku-\d+)/")
    ctx = runner.context(cfg, None, tables)
    bound = sql_path.group_parameters(ctx)
    assert set(bound) == notebook.markers(sql_text(sql_path.GROUP_TEMPLATE))
    assert bound["group_pattern"] == r"/(sku-\d+)/" and bound["groups_table"] == "c_groups"
    assert bound["max_images"] == ctx.family.max_images_per_request
    assert bound["prompt"] == cfg.group_prompt
    folder = replace(cfg, group_by="folder")
    assert sql_path.group_parameters(runner.context(folder, None, tables))[
        "group_pattern"] == FOLDER_PATTERN
    single = runner.context(replace(cfg, group_by=None), None, tables)
    assert set(sql_path.parameters(single)) == notebook.markers(sql_text(sql_path.TEMPLATE))
