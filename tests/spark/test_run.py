"""Whole runs on the shared local Spark session, real Delta tables, a real local endpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipeline import runs as runner
from pipeline.files import source
from pipeline.local.faults import Faults
from pipeline.tables import sink
from tests import files


def table(spark, cfg):
    return spark.read.format("delta").load(cfg.table)


def by_name(df) -> dict[str, dict]:
    return {r["path"].rsplit("/", 1)[-1]: r.asDict() for r in df.collect()}


def test_every_hostile_file_ends_as_one_row_with_its_exact_status(
    spark, serve, run_config, tmp_path
) -> None:
    cases = files.write_folder(tmp_path / "in", files.hostile_cases())
    endpoint, creds = serve()
    cfg = run_config(tmp_path / "in")
    result = runner.run(cfg, creds, spark, progress=lambda _: None)

    rows = by_name(table(spark, cfg))
    assert set(rows) == set(cases)  # one row per file, none missing
    for name, case in cases.items():
        row = rows[name]
        assert (row["status"], row["error_class"]) == (case.status, case.error_class), name
        assert row["format"] == case.format, name
        if case.status == "ok":
            assert row["caption"] and "local reference model" in row["caption"]
            assert row["usage_source"] == "endpoint" and row["total_tokens"] > 0
            assert row["estimated_image_tokens"] > 0 and row["attempts"] == 1
            assert row["sent_bytes"] > 0 and row["error_message"] is None
        else:
            assert row["error_message"] and row["caption"] is None
            assert row["attempts"] == 0 and row["sent_bytes"] is None
    stats = endpoint.stats()
    assert stats["rejected_400"] == 0  # nothing invalid was ever sent
    ok = [c for c in cases.values() if c.status == "ok"]
    assert stats["requests"] == len(ok) == result.statuses["ok"]
    assert result.listed == len(cases) and result.status == "succeeded"

    runs = spark.read.format("delta").load(cfg.table + "_runs").collect()
    assert [(r.status, r.listed, r.ok, r.invalid, r.requests) for r in runs] == [
        ("succeeded", len(cases), len(ok), len(cases) - len(ok), len(ok))
    ]
    assert "token" not in runs[0].config_json.lower().replace("max_tokens", "")


def test_a_rerun_skips_what_is_done_and_redoes_only_failures(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 8, "img{}.jpg", lambda i: (40 + i, 30))
    (folder / "broken.jpg").write_bytes(files.truncated_jpeg())
    # Answers that cannot be read (a proxy's HTML page) fail the rows: the endpoint is
    # reached, so it is no outage (an outage is waited out: pipeline/runs/recovery.py).
    failing, creds = serve(Faults(rate_html=1.0))
    cfg = run_config(folder, max_attempts=2, max_files_per_batch=3)
    first = runner.run(cfg, creds, spark, progress=lambda _: None)
    assert first.statuses == {"failed": 8, "invalid": 1}
    rows = by_name(table(spark, cfg))
    assert {r["error_class"] for n, r in rows.items() if n != "broken.jpg"} == {"bad_response"}
    assert all(r["attempts"] == 2 for n, r in rows.items() if n != "broken.jpg")
    assert failing.stats()["requests"] == 16

    healthy, creds = serve()
    second = runner.run(cfg, creds, spark, progress=lambda _: None)
    assert (second.listed, second.skipped) == (9, 1)  # the invalid file is done
    assert healthy.stats()["requests"] == 8
    assert {r["status"] for r in by_name(table(spark, cfg)).values()} == {"ok", "invalid"}

    third = runner.run(cfg, creds, spark, progress=lambda _: None)
    assert (third.skipped, third.written) == (9, 0)
    assert healthy.stats()["requests"] == 8
    assert table(spark, cfg).count() == 9


def test_identical_bytes_cost_one_request_and_every_path_keeps_its_row(
    spark, serve, run_config, tmp_path
) -> None:
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    same = files.jpeg(50, 50)
    for name in ("a/one.jpg", "two.jpg", "three copy.jpg"):
        (folder / name).write_bytes(same)
    endpoint, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    rows = by_name(table(spark, cfg))
    assert endpoint.stats()["requests"] == 1
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert len({r["caption"] for r in rows.values()}) == 1
    own = [r for r in rows.values() if r["reused_from"] is None]
    assert len(own) == 1 and own[0]["attempts"] == 1
    assert all(r["attempts"] == 0 for r in rows.values() if r["reused_from"])

    # A new file with the same bytes, in a later run, takes the stored answer for free.
    (folder / "four.jpg").write_bytes(same)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    assert endpoint.stats()["requests"] == 1
    assert by_name(table(spark, cfg))["four.jpg"]["status"] == "ok"


def test_answers_land_on_their_own_rows_whatever_order_they_complete_in(
    spark, serve, run_config, tmp_path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {f"img{i:02}.jpg": (30 + i, 20 + 2 * i) for i in range(30)}
    for name, (w, h) in sizes.items():
        (folder / name).write_bytes(files.jpeg(w, h))
    # Retries reorder completions: a third of first attempts fail, with random backoff.
    endpoint, creds = serve(Faults(rate_500=0.3, seed=3), latency_ms=20)
    cfg = run_config(folder, max_attempts=6, max_concurrency=6)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    rows = by_name(table(spark, cfg))
    assert endpoint.stats()["faults"]["500"] > 0
    for name, (w, h) in sizes.items():
        assert rows[name]["status"] == "ok", rows[name]["error_message"]
        assert f"{w}x{h} pixels" in rows[name]["caption"], name


def test_the_concurrency_budget_holds_across_all_spark_tasks(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 40, "img{}.jpg", lambda i: (20 + i, 20))
    endpoint, creds = serve(latency_ms=80, max_concurrency=4)
    cfg = run_config(folder, max_concurrency=4)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    stats = endpoint.stats()
    assert stats["by_status"].get("429", 0) == 0
    assert stats["max_in_flight"] == 4
    assert stats["answered_ok"] == 40


def test_replaying_a_batch_changes_nothing(spark, serve, run_config, tmp_path) -> None:
    folder = files.write_photos(tmp_path / "in", 4, "img{}.jpg", lambda i: (20 + i, 20))
    (folder / "empty.jpg").write_bytes(b"")
    _, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    before = table(spark, cfg).orderBy("path")
    before = spark.createDataFrame(before.collect(), before.schema)

    tables = sink.resolve(spark, cfg.table)
    replay = spark.createDataFrame(before.collect(), before.schema)
    sink.merge_batch(spark, tables, replay)
    sink.merge_batch(spark, tables, replay.filter(F.col("status") == "ok"))
    assert_df_equality(before, table(spark, cfg).orderBy("path"), ignore_row_order=True)


def test_a_worse_outcome_never_replaces_a_paid_answer(spark, serve, run_config, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "img.jpg").write_bytes(files.jpeg())
    _, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    ok = table(spark, cfg)
    failed = ok.withColumn("status", F.lit("failed")).withColumn("caption", F.lit(None))
    sink.merge_batch(spark, sink.resolve(spark, cfg.table), failed)
    assert [r.status for r in table(spark, cfg).collect()] == ["ok"]


def test_the_token_never_reaches_a_plan_a_table_or_a_log(
    spark, serve, run_config, tmp_path, capfd
) -> None:
    from pipeline.endpoint.asking import CallPlan
    from pipeline.endpoint.client import ClientSettings
    from pipeline.runs.udfs import ANSWERED, ask_in_tasks
    from pipeline.spark import spark_log_path

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "img.jpg").write_bytes(files.jpeg())
    endpoint, creds = serve(Faults(rate_500=0.5, seed=1))
    token = creds.headers.reveal().split("Bearer ", 1)[1]
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=print)

    plan = CallPlan(ClientSettings(endpoint.url, creds, 1, 1, 1), cfg.prompt_spec(), None, 1)
    df = spark.createDataFrame([("p", b"x", "image/jpeg", 1)],
                               "path string, image binary, mime string, estimated_image_tokens int")
    query = df.mapInPandas(ask_in_tasks(plan), ANSWERED)
    query.explain(extended=True)  # printed: captured below with the run's own output
    plans = query._jdf.queryExecution().toString()
    texts = [plans, table(spark, cfg).toPandas().to_json(),
             spark.read.format("delta").load(cfg.table + "_runs").toPandas().to_json()]
    texts += list(capfd.readouterr())
    log = Path(spark_log_path())
    if log.exists():
        texts.append(log.read_text(errors="replace"))
    # Also the table's files on disk, byte for byte.
    for path in Path(cfg.table).rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    assert token and all(token not in text for text in texts)


def test_one_request_in_five_failing_ends_with_every_row_and_a_rerun_captions_them(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 40, "img{:02}.jpg", lambda i: (30 + i, 30))
    (folder / "not an image.jpg").write_bytes(files.pdf())
    kinds = ("rate_429", "rate_500", "rate_502", "rate_503", "rate_504", "rate_html",
             "rate_drop", "rate_hang")
    faults = Faults(**{k: 0.2 / len(kinds) for k in kinds}, hang_s=5, seed=11)
    endpoint, creds = serve(faults)
    # One attempt each, so the faults stay visible as failed rows.
    cfg = run_config(folder, max_attempts=1, request_timeout=1.0)
    first = runner.run(cfg, creds, spark, progress=lambda _: None)
    rows = by_name(table(spark, cfg))
    assert len(rows) == 41 and first.written == 41
    failed = {n: r for n, r in rows.items() if r["status"] == "failed"}
    assert 2 <= len(failed) <= 20
    assert {r["error_class"] for r in failed.values()} <= {
        "rate_limited", "server_error", "bad_response", "connection_error", "timeout"}
    assert all(r["attempts"] == 1 and r["error_message"] for r in failed.values())
    assert rows["not an image.jpg"]["error_class"] == "not_an_image"

    second = runner.run(replace(cfg, max_attempts=5), creds, spark, progress=lambda _: None)
    assert second.skipped == 41 - len(failed)
    rows = by_name(table(spark, cfg))
    assert sum(r["status"] == "ok" for r in rows.values()) == 40
    assert endpoint.stats()["rejected_400"] == 0


def test_structured_answers_fill_response_json_and_the_caption_field(
    spark, serve, run_config, tmp_path
) -> None:
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "img.jpg").write_bytes(files.jpeg(60, 40))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({
        "type": "object",
        "properties": {"alt_text": {"type": "string"}, "tags": {"type": "array",
                       "items": {"type": "string"}}, "width": {"type": "integer"}},
        "required": ["alt_text", "tags", "width"],
    }))
    _, creds = serve()
    cfg = run_config(folder, response_schema=str(schema), caption_field="alt_text")
    runner.run(cfg, creds, spark, progress=lambda _: None)
    [row] = table(spark, cfg).collect()
    answer = json.loads(row.response_json)
    assert row.status == "ok" and row.caption == answer["alt_text"]
    assert answer["width"] == 60 and isinstance(answer["tags"], list)

    # A different schema is a different prompt: the file is captioned again under a new id.
    plain = run_config(folder)
    runner.run(plain, creds, spark, progress=lambda _: None)
    assert table(spark, cfg).select("prompt_id").distinct().count() == 2


def test_links_are_not_followed_so_a_loop_ends_and_each_file_is_captioned_once(
    spark, serve, run_config, tmp_path
) -> None:
    """The loop of #15: `sub/loop -> ..` made 2 images into 82 rows, 40 folders deep."""
    files.write_photos(tmp_path / "in", 2, "photo {}.jpg", lambda i: (40 + i, 30))
    (tmp_path / "in" / "sub").mkdir()
    (tmp_path / "in" / "sub" / "loop").symlink_to("..", target_is_directory=True)
    (tmp_path / "in" / "twin.jpg").symlink_to(tmp_path / "in" / "photo 0.jpg")
    files.write_photos(tmp_path / "elsewhere", 1, "far {}.jpg", lambda i: (20, 20))
    (tmp_path / "in" / "far.jpg").symlink_to(tmp_path / "elsewhere" / "far 0.jpg")
    (tmp_path / "in" / "sub" / "empty.jpg").write_bytes(b"")  # still found, as without links
    endpoint, creds = serve()
    cfg = run_config(tmp_path / "in")
    said: list[str] = []
    result = runner.run(cfg, creds, spark, progress=lambda u: said.append(str(u)))

    rows = by_name(table(spark, cfg))
    assert sorted(rows) == ["empty.jpg", "photo 0.jpg", "photo 1.jpg"]
    assert all("/loop/" not in r["path"] for r in rows.values())
    assert rows["empty.jpg"]["error_class"] == "empty_file"
    assert result.listed == 3 and endpoint.stats()["requests"] == 2
    (note,) = [line for line in said if "symbolic link" in line]
    assert note.startswith(f"3 symbolic link(s) under {tmp_path / 'in'} skipped, not followed")
    assert note.endswith("far.jpg, sub/loop, twin.jpg")
    # The listing from the driver carries what Spark's would: the same lengths and times.
    listed = {r.path: r for r in source.list_files(spark, str(tmp_path / "in")).files.collect()}
    scanned = {r.path: r for r in spark.read.format("binaryFile")
               .load(str(tmp_path / "in" / "photo*.jpg")).select(*source.METADATA).collect()}
    assert all(listed[p] == row for p, row in scanned.items())
    # estimate says the same, before any run.
    from pipeline.estimate import estimate, render

    assert "3 symbolic link(s)" in render(estimate(cfg, spark)).splitlines()[-1]
