"""Answers checked before they are kept: how an answer ended (`finish_reason`), a structured
answer against the whole response schema, the schema itself before anything starts, and what
the run's totals and summary say of them. Pure functions; the same over real HTTP is
tests/e2e/test_bad_answers.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.config import ConfigError, RunConfig
from pipeline.endpoint.asking import CAPTIONED, caption_row, failed_row
from pipeline.endpoint.client import RETRIABLE, CallResult
from pipeline.endpoint.payloads import (
    BadResponse,
    PromptSpec,
    SchemaMismatch,
    answer_parser,
    parse_answer,
)
from pipeline.endpoint.schemas import MAX_MESSAGE, answer_problem, schema_problem
from pipeline.outcomes import ErrorClass, Status
from pipeline.resources import sql_text
from pipeline.runs import rows
from pipeline.runs.context import RunResult
from tests import files

# The tests' answer schema, with a nested array of objects.
SCHEMA = {**files.ANSWER_SCHEMA, "properties": {
    **files.ANSWER_SCHEMA["properties"],
    "objects": {"type": "array", "items": {
        "type": "object", "properties": {"name": {"type": "string"}},
        "required": ["name"], "additionalProperties": False}},
}}
GOOD = {"caption": "A mug.", "category": "product", "count": 1, "objects": [{"name": "mug"}]}
USAGE = {"prompt_tokens": 700, "completion_tokens": 300, "total_tokens": 1000}
SPEC = PromptSpec("Describe.", max_tokens=300)


def body(content: str | None, finish_reason: str | None = "stop") -> bytes:
    choice: dict = {"message": {"role": "assistant", "content": content}}
    if finish_reason is not None:
        choice["finish_reason"] = finish_reason
    return json.dumps({"choices": [choice], "usage": USAGE}).encode()


def answered(raw: bytes, spec: PromptSpec = SPEC) -> dict:
    """The CAPTIONED row of one request answered `raw` at the first attempt."""
    answer = answer_parser(spec)(raw)
    return caption_row(CallResult(answer, None, None, 1, 80), spec, 500)


# -- finish_reason ---------------------------------------------------------------------------

def test_an_answer_keeps_how_it_ended() -> None:
    row = answered(body("A mug on a desk."))
    assert (row["status"], row["caption"], row["finish_reason"]) == (
        Status.OK, "A mug on a desk.", "stop")
    assert answered(body("A mug.", finish_reason=None))["finish_reason"] is None
    assert "finish_reason" in CAPTIONED and "finish_reason" in rows.ANSWER
    assert failed_row(CallResult(None, ErrorClass.TIMEOUT, "late", 3, None))[
        "finish_reason"] is None


def test_a_cut_off_answer_fails_as_cut_off_with_what_it_cost_and_no_caption() -> None:
    row = answered(body("A mug on a desk next to a", finish_reason="length"))
    assert (row["status"], row["error_class"], row["finish_reason"]) == (
        Status.FAILED, ErrorClass.CUT_OFF, "length")
    assert row["caption"] is None and row["response_json"] is None
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        700, 300, 1000)  # paid for: kept
    assert row["error_message"] == ("The answer was cut off at max_tokens (300): raise "
                                    "--max-tokens and run again to ask it again.")


def test_a_cut_off_structured_answer_is_cut_off_not_a_bad_response() -> None:
    spec = PromptSpec("Describe.", 300, response_schema=SCHEMA)
    row = answered(body('{"caption": "A mug on a', finish_reason="length"), spec)
    assert (row["status"], row["error_class"]) == (Status.FAILED, ErrorClass.CUT_OFF)


@pytest.mark.parametrize("content", ["", "I can't help with that."])
def test_a_refusal_fails_as_refused(content: str) -> None:
    row = answered(body(content, finish_reason="content_filter"))
    assert (row["status"], row["error_class"], row["finish_reason"]) == (
        Status.FAILED, ErrorClass.REFUSED, "content_filter")
    assert row["caption"] is None and row["completion_tokens"] == 300
    assert "refused" in row["error_message"] and content in row["error_message"]


@pytest.mark.parametrize("finish", ["tool_calls", "something_new", None])
def test_other_finishes_are_answers_as_before(finish: str | None) -> None:
    row = answered(body("A mug.", finish_reason=finish))
    assert (row["status"], row["caption"], row["finish_reason"]) == (Status.OK, "A mug.", finish)


def test_cut_off_and_refused_are_failures_that_are_not_asked_again() -> None:
    assert {ErrorClass.CUT_OFF, ErrorClass.REFUSED}.isdisjoint(RETRIABLE)
    assert ErrorClass.SCHEMA_MISMATCH in RETRIABLE


# -- the response schema ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "where", "what"),
    [
        ({"category": "not-product"}, "$.category",
         "'not-product' is not one of ['product', 'document', 'scene', 'other']"),
        ({"count": "many"}, "$.count", "'many' is not of type 'integer'"),
        ({"count": None}, "$", "'count' is a required property"),
        ({"colour": "red"}, "$", "Additional properties are not allowed ('colour' was unexpected)"),
        ({"objects": [{"name": "mug"}, {"name": 3}]}, "$.objects[1].name",
         "3 is not of type 'string'"),
        ({"objects": [{}]}, "$.objects[0]", "'name' is a required property"),
    ],
)
def test_a_structured_answer_that_breaks_the_schema_says_where_and_what(
    change: dict, where: str, what: str
) -> None:
    answer = {**GOOD, **change}
    answer = {k: v for k, v in answer.items() if v is not None}
    with pytest.raises(SchemaMismatch) as raised:
        parse_answer(body(json.dumps(answer)), "caption", True, SCHEMA)
    assert str(raised.value) == f"The answer breaks the response schema at {where}: {what}"


def test_a_structured_answer_that_fits_the_schema_is_kept() -> None:
    parsed = parse_answer(body(json.dumps(GOOD)), "caption", True, SCHEMA)
    assert parsed.caption == "A mug." and json.loads(parsed.response_json or "") == GOOD


def test_only_json_and_the_caption_field_are_checked_without_a_schema() -> None:
    parsed = parse_answer(body(json.dumps({**GOOD, "count": "many"})), "caption", True)
    assert parsed.caption == "A mug."
    with pytest.raises(BadResponse, match="not valid JSON") as raised:
        parse_answer(body("{nope"), "caption", True, SCHEMA)
    assert not isinstance(raised.value, SchemaMismatch)


def test_a_long_validator_message_is_one_shortened_line() -> None:
    schema = {"type": "object", "properties": {"a": {"enum": [f"v{i}" * 30 for i in range(40)]}}}
    problem = answer_problem({"a": "line\nbreak"}, schema)
    assert problem is not None and "\n" not in problem
    assert len(problem) == MAX_MESSAGE and problem.endswith("...")


def test_the_schema_names_its_draft() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}}
    assert schema_problem(draft7) is None
    assert answer_problem({"n": 0}, draft7) == "$.n: 0 is less than or equal to the minimum of 0"


# -- the schema before anything starts -------------------------------------------------------

@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ({"type": "strin"},
         r"is not a valid JSON Schema: 'strin' is not valid .* \(at \$\.type in the schema\)"),
        ({"properties": {"n": {"minimum": "one"}}},
         r"is not a valid JSON Schema: 'one' is not of type 'number'"),
        ([{"type": "object"}], "must hold a JSON Schema object"),
    ],
)
def test_a_schema_the_validator_cannot_compile_is_a_usage_error(
    tmp_path: Path, schema: object, match: str
) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(ConfigError, match=match) as raised:
        RunConfig(response_schema=str(path)).prompt_spec()
    assert "\n" not in str(raised.value)


def test_the_run_command_stops_on_such_a_schema_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # tests/unit/conftest.py refuses a Spark session: this passes only if nothing started.
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "object", "required": "caption"}))
    code = cli.main(["run", "--input", str(tmp_path), "--table", str(tmp_path / "t"),
                     "--response-schema", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "t").exists()
    assert err.startswith("vision-batch: error: response_schema: ") and err.count("\n") == 1
    assert "'caption' is not of type 'array'" in err


# -- the captions table, the run's totals and its summary ------------------------------------

def test_the_captions_ddl_declares_every_answer_column() -> None:
    ddl = sql_text("create_captions.sql")
    declared = set(re.findall(r"^\s+([a-z_0-9]+) [A-Z]", ddl, re.M))
    for_totals = {"waited_itpm_s", "waited_otpm_s", "waited_qph_s", "task_attempt"}
    assert set(rows.ANSWER) - for_totals <= declared
    assert re.search(r"^  finish_reason STRING COMMENT", ddl, re.M)
    # ai_query says nothing of how an answer ended: the SQL path writes NULL there.
    assert "CAST(NULL AS STRING) AS finish_reason" in sql_text("caption_files.sql")


def test_the_run_counts_finish_reasons_and_the_summary_names_the_setting_to_raise() -> None:
    result = RunResult("r", "t", max_tokens=300)
    ok = {"status": "ok", "attempts": 1, "request_share": 1.0, "finish_reason": "stop"}
    cut = {"status": "failed", "attempts": 1, "request_share": 1.0, "finish_reason": "length",
           "error_class": "cut_off", "completion_tokens": 300}
    result.add([ok] * 3 + [cut] * 2)
    assert result.finish_reasons == {"stop": 3, "length": 2} and result.cut_off == 2
    assert result.completion_tokens == 600  # what the cut-off answers cost is counted
    lines = cli.summary(result).splitlines()
    assert ("  cut off 2 answer(s) reached --max-tokens 300: raise it and run again to ask "
            "them again") in lines
    assert lines[-1].startswith("  table")
    clean = RunResult("r", "t", max_tokens=300)
    clean.add([ok])
    assert "cut off" not in cli.summary(clean)


# -- the SQL path: what ai_query stored, checked after the template ---------------------------

def test_the_sql_path_checks_a_stored_answer_as_the_udf_path_checks_one() -> None:
    from pipeline.runs.sql import NO_FINISH_REASON, answer_check

    assert answer_check(json.dumps(GOOD), SCHEMA, "caption") is None
    assert answer_check(None, SCHEMA, "caption") is None  # no answer: nothing to check
    assert answer_check(json.dumps({**GOOD, "category": "not-product"}), SCHEMA, "caption") == (
        "schema_mismatch", "The answer breaks the response schema at $.category: "
        "'not-product' is not one of ['product', 'document', 'scene', 'other']")
    assert answer_check('{"caption": "A mug on a', SCHEMA, "caption") == (
        "bad_response", f"The structured answer is not valid JSON.{NO_FINISH_REASON}")
    loose = {"type": "object"}
    assert answer_check('{"text": "A mug."}', loose, "caption") == (
        "bad_response", f"The structured answer has no string field 'caption'.{NO_FINISH_REASON}")
