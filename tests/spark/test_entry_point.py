"""The Python entry point, as a notebook calls it: `caption(spark, **settings)` on the
caller's session, a RunResult back, and a VisionBatchError when the run did not do its job."""

from __future__ import annotations

import pytest

from pipeline import caption
from pipeline.errors import TooManyFailed
from pipeline.local.bad_answers import BadAnswers
from pipeline.runs.context import RunResult
from tests import files


def test_caption_runs_on_the_callers_session_and_raises_when_too_many_rows_fail(
    spark, serve, tmp_path, monkeypatch, capsys
) -> None:
    folder = files.write_photos(tmp_path / "in", 3, "p{}.jpg", lambda i: (40 + i, 30))
    (folder / "notes.jpg").write_bytes(b"meeting notes, not a picture")
    table = str(tmp_path / "out" / "captions")

    # No endpoint named: the local reference model, on the session it was handed.
    result = caption(spark, input=str(folder), table=table, max_concurrency=2)
    assert isinstance(result, RunResult) and result.status == "succeeded"
    assert result.statuses == {"ok": 3, "invalid": 1} and result.table == table
    assert result.spark_seconds < 0.5  # no session of its own was made
    assert capsys.readouterr().out.startswith("No --endpoint given: using the local reference "
                                              "model at http://127.0.0.1:")
    rows = spark.read.format("delta").load(table).filter(f"run_id = '{result.run_id}'")
    assert {r.prompt_id for r in rows.collect()} == {result.prompt_id}

    # An endpoint that refuses every answer: the run finishes, its rows kept, and raises.
    endpoint, credentials = serve(endpoint_name="my-vlm",
                                  bad_answers=BadAnswers(rate_refusal=1.0))
    monkeypatch.setenv("DATABRICKS_TOKEN", credentials.headers.reveal().split("Bearer ", 1)[1])
    settings = {"input": str(folder), "table": table, "host": endpoint.url,
                "endpoint": "my-vlm"}
    with pytest.raises(TooManyFailed) as raised:
        caption(spark, **settings)
    failed = raised.value.result
    assert raised.value.exit_code == 3 and failed.statuses == {"failed": 3, "invalid": 1}
    assert str(raised.value) == (f"3 of 3 rows failed in run {failed.run_id} (100.0%, over "
                                 "--max-failed-share 5%): refused 3")

    runs = {r.run_id: r for r in spark.read.format("delta").load(table + "_runs").collect()}
    assert {run: (r.status, r.exit_code) for run, r in runs.items()} == {
        result.run_id: ("succeeded", 0), failed.run_id: ("succeeded", 3)}
