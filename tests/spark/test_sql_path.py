"""The SQL path: ai_query templates run locally with stand-ins, same table as the UDF path."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from chispa import assert_df_equality

from pipeline import notebook
from pipeline import runs as runner
from pipeline.local.faults import Faults
from pipeline.resources import sql_dir, sql_text
from tests import files

HOSTILE = "Describe it'; DROP TABLE captions; -- \" /* */"


def mixed_folder(folder: Path) -> None:
    """Good images of distinct sizes and the broken files both paths judge alike."""
    files.write_photos(folder, 5, "photo {}.jpg", lambda i: (40 + i, 30 + i))
    (folder / "diagram.png").write_bytes(files.png(70, 50))
    (folder / "copy of photo 0.jpg").write_bytes(files.jpeg(40, 30))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "invoice.jpg").write_bytes(files.pdf())
    (folder / "notes.png").write_bytes(b"plain text\n" * 20)
    (folder / "vector.svg").write_bytes(files.svg())
    (folder / "iphone.heic").write_bytes(files.heic())
    (folder / "it's; -- odd name.jpg").write_bytes(files.jpeg(61, 41))


def outcome(spark, table: str):
    return (spark.read.format("delta").load(table)
            .select("path", "status", "error_class").orderBy("path"))


def test_sql_and_udf_paths_write_the_same_rows_and_schema(
    spark, serve, run_config, tmp_path
) -> None:
    mixed_folder(tmp_path / "in")
    endpoint, creds = serve()
    udf = run_config(tmp_path / "in", table=str(tmp_path / "udf" / "captions"))
    sql = replace(udf, mode="sql", table=str(tmp_path / "sql" / "captions"))
    runner.run(udf, creds, spark, progress=lambda _: None)
    udf_requests = endpoint.stats()["requests"]
    result = runner.run(sql, creds, spark, progress=lambda _: None)

    assert_df_equality(outcome(spark, udf.table), outcome(spark, sql.table))
    a = spark.read.format("delta").load(udf.table)
    b = spark.read.format("delta").load(sql.table)
    assert a.schema == b.schema
    # Duplicates cost one request on both paths; nothing invalid is sent.
    assert endpoint.stats()["requests"] - udf_requests == udf_requests == 7
    assert endpoint.stats()["rejected_400"] == 0
    assert result.statuses == {"ok": 8, "invalid": 5} and result.requests == 7
    rows = {r.path.rsplit("/", 1)[-1]: r for r in b.collect()}
    for i in range(5):  # each caption describes its own image
        assert f"{40 + i}x{30 + i} pixels" in rows[f"photo {i}.jpg"].caption
    assert "61x41 pixels" in rows["it's; -- odd name.jpg"].caption
    pair = [rows["copy of photo 0.jpg"], rows["photo 0.jpg"]]
    assert sorted((r.attempts, r.reused_from is None) for r in pair) == [(0, False), (1, True)]
    assert {r.reused_from for r in pair} - {None} == {min(r.path for r in pair)}
    ok = [r for r in rows.values() if r.status == "ok"]
    assert all(r.usage_source == "estimated" and r.total_tokens > 0 for r in ok)
    assert all(r.estimated_image_tokens > 0 and r.content_sha256 for r in ok)

    history = spark.read.format("delta").load(sql.table + "_runs").collect()
    assert [(r.mode, r.status, r.ok, r.invalid) for r in history] == [("sql", "succeeded", 8, 5)]

    # The SQL template over the UDF path's table: the template computes the same prompt id
    # as the UDF path, so it finds every file done and asks nothing: one row per file.
    requests = endpoint.stats()["requests"]
    again = runner.run(replace(udf, mode="sql"), creds, spark, progress=lambda _: None)
    assert (again.skipped, again.written) == (13, 0)
    assert endpoint.stats()["requests"] == requests
    after = spark.read.format("delta").load(udf.table).collect()
    assert len(after) == len({r.path for r in after}) == 13
    # One prompt id on the rows of both paths and on both runs of the table (the run's id,
    # which RunResult carries too): what the run's configuration makes in Python.
    runs = spark.read.format("delta").load(udf.table + "_runs").collect()
    assert sorted(r.mode for r in runs) == ["sql", "udf"] and again.run_id in {
        r.run_id for r in runs}
    ids = {r.prompt_id for r in after + b.collect() + runs + history}
    assert ids == {udf.prompt_spec().prompt_id}


def test_a_hostile_prompt_or_path_cannot_change_the_sql_that_runs(
    spark, serve, run_config, tmp_path, monkeypatch
) -> None:
    mixed_folder(tmp_path / "in")
    _, creds = serve()
    cfg = run_config(tmp_path / "in", mode="sql", prompt=HOSTILE)
    statements: list[tuple[str, dict]] = []
    original = spark.sql

    def recording(query, args=None, **kwargs):
        statements.append((query, dict(args or {})))
        return original(query, args=args, **kwargs)

    monkeypatch.setattr(spark, "sql", recording)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    monkeypatch.undo()

    templates = {p.name: p.read_text() for p in sql_dir().glob("*.sql")}
    for query, _ in statements:
        assert query in templates.values()  # every statement is a template, as written
        assert HOSTILE not in query and "odd name" not in query
    [caption_args] = [a for q, a in statements if q == templates["caption_files.sql"]]
    assert caption_args["prompt"] == HOSTILE
    rows = spark.read.format("delta").load(cfg.table)
    assert rows.count() == 13  # the table is whole: nothing was dropped or cut short
    assert rows.filter(rows.path.endswith("it's; -- odd name.jpg")).first().status == "ok"
    [run] = spark.read.format("delta").load(cfg.table + "_runs").collect()
    assert json.loads(run.config_json)["prompt"] == HOSTILE


def test_ai_query_failures_become_failed_rows_and_a_rerun_captions_them(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 3, "p{}.jpg", lambda i: (30 + i, 30))
    failing, creds = serve(Faults(rate_503=1.0))
    cfg = run_config(folder, mode="sql", max_attempts=1)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    rows = spark.read.format("delta").load(cfg.table).collect()
    assert {(r.status, r.error_class) for r in rows} == {("failed", "server_error")}
    assert all("HTTP 503" in r.error_message for r in rows)

    healthy, creds = serve()
    second = runner.run(cfg, creds, spark, progress=lambda _: None)
    assert second.statuses == {"ok": 3} and healthy.stats()["requests"] == 3


def test_the_notebook_is_the_templates_with_a_widget_for_every_marker() -> None:
    text = (sql_dir() / "caption_notebook.sql").read_text()
    assert text == notebook.render(), "regenerate: python -m pipeline.notebook > sql/..."
    assert text.startswith("-- Databricks notebook source\n")
    for name in notebook.TEMPLATES:
        assert sql_text(name).strip() in text
    used = set().union(*(notebook.markers(sql_text(n)) for n in notebook.TEMPLATES))
    widgets = set(re.findall(r"CREATE WIDGET TEXT (\w+)", text))
    assert used == widgets
    # No widget names the prompt id: caption_files.sql's `question` computes it, verbatim.
    assert "prompt_id" not in widgets and "WITH question AS (" in text


def test_both_paths_merge_with_the_same_rules() -> None:
    def clauses(name: str) -> str:
        text = sql_text(name)
        return text[text.index("WHEN MATCHED"):].strip()

    assert clauses("caption_files.sql") == clauses("merge_captions.sql")


def test_on_compute_without_ai_query_the_sql_path_stops_in_one_line(
    spark, serve, run_config, tmp_path, monkeypatch
) -> None:
    # A classic Databricks cluster: read_files is there, ai_query is not (it runs only on
    # serverless and SQL warehouses). Only the stand-in for read_files is registered.
    from pipeline.local import sql_functions
    from pipeline.runs import sql as sql_path

    def classic_cluster(session, credentials, config) -> None:
        session.udtf.register("read_files", sql_functions.udtf(
            sql_functions.ReadFiles, returnType=sql_functions.READ_FILES_SCHEMA))
        session.sql("DROP TEMPORARY FUNCTION IF EXISTS ai_query")

    monkeypatch.setattr(sql_functions, "register", classic_cluster)
    folder = tmp_path / "in"
    files.write_photos(folder, 2, "p{}.jpg", lambda i: (20 + i, 20))
    endpoint, creds = serve()
    cfg = run_config(folder, mode="sql")
    try:
        runner.run(cfg, creds, spark, progress=lambda _: None)
    except sql_path.SqlPathError as exc:
        assert "--mode udf" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("the SQL path ran without ai_query")
    assert endpoint.stats()["requests"] == 0
