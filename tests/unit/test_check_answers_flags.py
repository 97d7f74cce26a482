"""jobs/check_answers.py's flags: what stops before Spark starts (this tier's conftest fails any
test that starts a session). tests/spark/test_check_answers_job.py runs the check itself."""

from __future__ import annotations

import json
import runpy
from typing import Any

import pytest

from tests.files import ANSWER_SCHEMA
from tests.unit.bundle_config import REPO

SCRIPT = runpy.run_path(str(REPO / "jobs" / "check_answers.py"))
RUN = ["--table=main.vision_batch.captions", "--run-id=1234", "--endpoint=some-endpoint"]


def response_format(schema: Any) -> str:
    return json.dumps({"type": "json_schema",
                       "json_schema": {"name": "answer", "schema": schema, "strict": True}})


def test_an_empty_response_format_means_plain_answers_and_nothing_to_check(capsys) -> None:
    # The SQL job passes every parameter; a run of plain answers passes this one empty.
    for empty in ("--response-format=", "--response-format=  "):
        assert SCRIPT["main"]([*RUN, empty]) == 0
        out, err = capsys.readouterr()
        assert out == "run 1234: plain answers (no response format), nothing to check\n"
        assert err == ""


@pytest.mark.parametrize(("text", "says"), [
    ('{"type": "json_schema", "json_schema": {', "--response-format is not JSON: "),
    ('{"type": "json_object"}', "--response-format holds no schema: "),
    ('{"type": "json_schema", "json_schema": {"name": "a", "schema": "caption"}}',
     "--response-format holds no schema: "),
    ('["caption"]', "--response-format holds no schema: "),
    (response_format({"type": "nope"}),
     "--response-format's schema is not a valid JSON Schema: "),
])
def test_a_format_that_is_no_json_or_holds_no_usable_schema_is_a_one_line_usage_error(
        text: str, says: str, capsys) -> None:
    assert SCRIPT["main"]([*RUN, f"--response-format={text}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"check_answers: error: {says}")
    assert err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--table=", "--run-id=", "--endpoint=", "--caption-field="])
def test_an_empty_value_where_one_is_needed_is_a_usage_error(flag: str, capsys) -> None:
    args = [*RUN, f"--response-format={response_format(ANSWER_SCHEMA)}", flag]
    assert SCRIPT["main"](args) == 2
    assert capsys.readouterr().err == f"check_answers: error: {flag[:-1]} is empty\n"


def test_the_schema_is_read_from_the_sql_jobs_response_format() -> None:
    assert SCRIPT["response_schema"](response_format(ANSWER_SCHEMA)) == ANSWER_SCHEMA
    assert SCRIPT["response_schema"]("") is None
