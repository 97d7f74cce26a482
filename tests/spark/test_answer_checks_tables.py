"""Answers checked, as the tables hold them (the rest of #27's tests need no Spark:
tests/e2e/test_bad_answers.py, tests/e2e/test_packing.py). On the SQL path ai_query stores a
structured answer as the endpoint gave it, cut off or off the schema (so does the local
stand-in), and the check after the template (pipeline/runs/sql.py) fails those rows as the UDF
path would have; on the UDF path a packed run keeps each image's own finish_reason."""

from __future__ import annotations

import json

from pipeline import runs as runner
from pipeline.endpoint.schemas import answer_problem
from pipeline.local.bad_answers import BadAnswers
from tests import files


def test_structured_answers_that_break_the_schema_or_are_cut_off_fail_after_the_template(
    spark, serve, run_config, tmp_path
) -> None:
    folder = files.write_photos(tmp_path / "in", 10, "p{}.jpg", lambda i: (30 + i, 24))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(files.ANSWER_SCHEMA))
    bad = BadAnswers(rate_cut_off=0.2, rate_schema_break=0.3, seed=3)
    endpoint, creds = serve(bad_answers=bad)
    cfg = run_config(folder, mode="sql", response_schema=str(schema))
    result = runner.run(cfg, creds, spark, progress=lambda _: None)

    made = endpoint.stats()["bad_answers"]
    assert made["cut_off"] and made["schema_break"]  # the seed gives both kinds
    assert endpoint.stats()["requests"] == 10  # ai_query asks each once; nothing is re-asked
    rows = spark.read.format("delta").load(cfg.table).collect()
    by_class: dict[str | None, list] = {}
    for row in rows:
        by_class.setdefault(row.error_class, []).append(row)
    assert len(by_class.get("schema_mismatch", [])) == made["schema_break"]
    assert len(by_class.get("bad_response", [])) == made["cut_off"]
    for row in by_class["schema_mismatch"]:
        assert row.status == "failed" and row.caption is None and row.response_json is None
        assert row.error_message.startswith("The answer breaks the response schema at $")
        assert row.total_tokens > 0  # paid for, the estimate kept
    for row in by_class["bad_response"]:
        assert row.status == "failed" and "raise --max-tokens" in row.error_message
    ok = by_class[None]
    assert len(ok) == 10 - made["cut_off"] - made["schema_break"]
    assert all(answer_problem(json.loads(r.response_json), files.ANSWER_SCHEMA) is None
               and r.caption for r in ok)
    # The run's summary counts what the check failed, and the runs table says so.
    assert result.error_classes == {"schema_mismatch": made["schema_break"],
                                    "bad_response": made["cut_off"]}
    [run] = spark.read.format("delta").load(cfg.table + "_runs").collect()
    assert run.failed == made["cut_off"] + made["schema_break"]


def test_a_packed_run_keeps_each_images_finish_reason_in_the_table(
    spark, serve, run_config, tmp_path
) -> None:
    # The UDF path, three images a request, every answer cut off: each pack keeps the entries
    # written in full before the cut; the rest are asked alone, and cut off there too.
    folder = files.write_photos(tmp_path / "in", 6, "p{}.jpg", lambda i: (30 + i, 24))
    endpoint, creds = serve(bad_answers=BadAnswers(rate_cut_off=1.0))
    cfg = run_config(folder, images_per_request=3, max_tokens=400)
    result = runner.run(cfg, creds, spark, progress=lambda _: None)

    rows = spark.read.format("delta").load(cfg.table).collect()
    kept = [r for r in rows if r.status == "ok"]
    cut = [r for r in rows if r.status == "failed"]
    assert kept and cut and len(rows) == 6
    assert all(r.finish_reason == "stop" and "pixels" in r.caption for r in kept)
    assert all((r.error_class, r.finish_reason, r.caption) == ("cut_off", "length", None)
               for r in cut)
    assert endpoint.stats()["requests"] == 2 + len(cut)
    assert result.cut_off == len(cut) and result.finish_reasons == {
        "stop": len(kept), "length": len(cut)}
    [run] = spark.read.format("delta").load(cfg.table + "_runs").collect()
    assert run.cut_off == len(cut)
