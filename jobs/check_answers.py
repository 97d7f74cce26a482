"""Databricks job task (spark_python_task) and local entry point: check the structured answers
one SQL run wrote, as `vision-batch run --mode sql` does right after its template.

The bundle's SQL job (conf/bundle/sql_job.yml) runs this between `caption_files.sql` and
`summarize_run.sql`, with its job parameters: a SQL warehouse runs no Python, and a JSON Schema
cannot be checked in SQL alone. The answers of the run that break the schema, or are no JSON,
become `failed` rows (`schema_mismatch`, `bad_response`), so the summary counts them.

    --table T              the captions table the run wrote
    --run-id R             the run whose `ok` rows are checked (each keeps its prompt id)
    --endpoint E           the endpoint the run asked
    --response-format F    the run's response format, as the SQL job's parameter holds it:
                           {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}};
                           empty: plain answers, nothing to check (exit 0)
    --caption-field C      the answer's field kept as the caption

It prints one line: the answers checked and those failed, by class. Exit 0 when the check ran
(failed rows are recorded, as a run records them), 2 for a usage error (before Spark starts),
1 when it could not run (no such table, a Spark failure).

Locally, after `vision-batch run --mode sql` or a SQL notebook run on a path table:

    python jobs/check_answers.py --table output/captions --run-id <id> --endpoint <name> \\
        --response-format "$(cat format.json)"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.cli import failure
from pipeline.endpoint.schemas import schema_problem
from pipeline.errors import RunError, UsageError
from pipeline.runs.sql import fail_unusable
from pipeline.spark import get_spark
from pipeline.tables import sink


def flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="check_answers.py", allow_abbrev=False,
        description="Fail the structured answers of one SQL run that break its schema.")
    parser.add_argument("--table", required=True, help="captions table the run wrote")
    parser.add_argument("--run-id", dest="run_id", required=True, help="run whose rows to check")
    parser.add_argument("--endpoint", required=True, help="endpoint the run asked")
    parser.add_argument("--response-format", dest="response_format", default="",
                        help="the run's JSON response format; empty for plain answers")
    parser.add_argument("--caption-field", dest="caption_field", default="caption",
                        help="the answer's field kept as the caption")
    return parser


def response_schema(text: str) -> dict[str, Any] | None:
    """The JSON Schema inside a response format, None for an empty one (plain answers).
    UsageError when the text is no JSON, holds no schema, or the validator cannot use it."""
    if not text.strip():
        return None
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--response-format is not JSON: {exc}") from None
    body = found.get("json_schema") if isinstance(found, dict) else None
    schema = body.get("schema") if isinstance(body, dict) else None
    if not isinstance(schema, dict):
        raise UsageError('--response-format holds no schema: give {"type": "json_schema", '
                         '"json_schema": {"name": ..., "schema": {...}}}, or nothing')
    problem = schema_problem(schema)
    if problem is not None:
        raise UsageError(f"--response-format's schema is not a valid JSON Schema: {problem}")
    return schema


def main(argv: Sequence[str] | None = None) -> int:
    args = flags().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        for name in ("table", "run_id", "endpoint"):
            if not getattr(args, name):
                raise UsageError(f"--{name.replace('_', '-')} is empty")
        schema = response_schema(args.response_format)
        if schema is None:
            print(f"run {args.run_id}: plain answers (no response format), nothing to check")
            return 0
        if not args.caption_field:
            raise UsageError("--caption-field is empty")
        spark = get_spark()
        tables = sink.find(spark, args.table)
        if tables is None:
            raise RunError(f"no captions table {args.table}")
        checked = fail_unusable(spark, tables.captions, args.run_id, args.endpoint, schema,
                                args.caption_field)
    except Exception as exc:  # one line, as `vision-batch` ends (cli.failure)
        message, code = failure(exc)
        print(f"check_answers: error: {message}", file=sys.stderr)
        return code
    print(f"run {args.run_id} in {args.table}: {checked.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
