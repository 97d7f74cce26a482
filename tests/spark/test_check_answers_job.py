"""jobs/check_answers.py, the SQL job's check of structured answers, on rows written straight
into a captions table made by the project's own DDL (what ai_query would have stored: the
answers as given). tests/spark/test_answer_checks_tables.py runs the same check inside
`vision-batch run --mode sql`; tests/unit/test_check_answers_flags.py covers the flags."""

from __future__ import annotations

import json
import runpy

from pipeline.tables import sink
from tests.files import ANSWER_SCHEMA
from tests.unit.bundle_config import REPO

SCRIPT = runpy.run_path(str(REPO / "jobs" / "check_answers.py"))
GOOD = {"caption": "A mug on a desk.", "category": "product", "count": 1}


def row(path: str, run_id: str, answer: str | None, status: str = "ok",
        error_class: str | None = None) -> dict:
    return {"path": path, "endpoint": "some-endpoint", "prompt_id": f"prompt-{run_id}",
            "status": status, "error_class": error_class,
            "caption": GOOD["caption"] if status == "ok" else None,
            "response_json": answer, "run_id": run_id, "attempts": 1, "total_tokens": 90,
            "usage_source": "estimated"}


def test_the_sql_jobs_check_fails_off_schema_and_non_json_answers_of_its_run_only(
    spark, tmp_path, capsys
) -> None:
    table = str(tmp_path / "captions")
    tables = sink.resolve(spark, table)
    off_schema = json.dumps({**GOOD, "category": "not-product"})
    rows = [
        row("/in/good.jpg", "7", json.dumps(GOOD)),
        row("/in/off.jpg", "7", off_schema),
        row("/in/extra.jpg", "7", json.dumps({**GOOD, "mood": "calm"})),
        row("/in/cut.jpg", "7", '{"caption": "A mug on a'),
        row("/in/timeout.jpg", "7", None, status="failed", error_class="timeout"),
        # Another run's answer, off the schema too: not this check's to fail.
        row("/in/older.jpg", "6", off_schema),
    ]
    sink.frame_of(spark, tables.schema, rows).write.format("delta").mode("append").save(table)
    response_format = json.dumps({"type": "json_schema", "json_schema": {
        "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}})

    code = SCRIPT["main"]([f"--table={table}", "--run-id=7", "--endpoint=some-endpoint",
                           f"--response-format={response_format}", "--caption-field=caption"])

    assert code == 0
    assert capsys.readouterr().out == (
        f"run 7 in {table}: checked 4 structured answers: 3 failed "
        "(bad_response 1, schema_mismatch 2)\n")
    rows = {r.path.rsplit("/", 1)[-1]: r for r in spark.read.format("delta").load(table)
            .collect()}
    assert {name: (r.status, r.error_class) for name, r in rows.items()} == {
        "good.jpg": ("ok", None),
        "off.jpg": ("failed", "schema_mismatch"),
        "extra.jpg": ("failed", "schema_mismatch"),
        "cut.jpg": ("failed", "bad_response"),
        "timeout.jpg": ("failed", "timeout"),
        "older.jpg": ("ok", None),
    }
    assert rows["off.jpg"].error_message.startswith(
        "The answer breaks the response schema at $.category")
    assert "raise --max-tokens" in rows["cut.jpg"].error_message
    for name in ("off.jpg", "extra.jpg", "cut.jpg"):
        failed = rows[name]
        assert failed.caption is None and failed.response_json is None
        assert failed.total_tokens == 90  # paid for: the estimate stays
    assert rows["good.jpg"].response_json == json.dumps(GOOD)
    assert rows["older.jpg"].response_json == off_schema

    # Run again (a task retry): nothing is left to fail, the failed rows stay as they are.
    assert SCRIPT["main"]([f"--table={table}", "--run-id=7", "--endpoint=some-endpoint",
                           f"--response-format={response_format}"]) == 0
    assert capsys.readouterr().out.endswith(
        "checked 1 structured answers: all fit the response schema\n")
