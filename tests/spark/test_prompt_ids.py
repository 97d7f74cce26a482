"""One prompt id for one question on every path: the SQL templates compute it with `sha2` from
their own parameters, Python's PromptSpec.prompt_id from the same values, and they agree."""

from __future__ import annotations

import json

from pipeline import notebook
from pipeline import runs as runner
from pipeline.endpoint.payloads import PromptSpec
from pipeline.endpoint.prompt_ids import FOLDER_PATTERN
from pipeline.resources import sql_text
from pipeline.runs import sql as sql_path
from pipeline.tables import sink

TRICKY = "Décris « l'image » 😀\n\t\"quoted\" \\back\\slash\\ \x01\x1f\x7f \u2028 -- ; DROP ''"
# Nested keys in no order, non-ASCII keys and values, numbers a VARIANT keeps as integers,
# decimals and doubles (1e-05: json.dumps writes an exponent), strings JSON must escape.
SCHEMA = {
    "type": "object",
    "required": ["résumé", "count"],
    "properties": {
        "résumé": {"type": "string", "description": "Une \"phrase\"\n😀 \\ / \x02\x1f\x7f\u2028"},
        "count": {"type": "integer", "minimum": 0, "maximum": 10**20},
        "score": {"type": "number", "multipleOf": 0.25, "maximum": 100.0, "minimum": 1e-05},
        "tags": {"type": "array", "items": {"enum": ["a", "Z", "é", None, True]}},
        # Java orders keys by UTF-16 units: the emoji (D83D DE00) before U+FB01, unlike Python.
        "\ufb01": {"type": "boolean"}, "😀": {"type": "null"},
    },
    "additionalProperties": False,
}


def question(template: str) -> str:
    """The template's `question` CTE alone, as a query of its prompt id."""
    text = sql_text(template)
    start = text.index("  WITH question AS (")
    return text[start:text.index("  listed AS (", start)].rstrip().rstrip(",") + (
        "\nSELECT prompt_id FROM question")


def as_text(spec: PromptSpec) -> dict[str, str]:
    """A SQL job's or notebook's values: all text, the response format written by hand (keys
    reversed, indented, non-ASCII as it is), the temperature with a trailing zero."""
    def reversed_keys(value):
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        return [reversed_keys(v) for v in value] if isinstance(value, list) else value

    rf = spec.response_format
    return {
        "prompt": spec.prompt, "max_tokens": f" {spec.max_tokens}",
        "temperature": "" if spec.temperature is None else f"{spec.temperature}0",
        "response_format": "" if rf is None else json.dumps(
            reversed_keys(rf), indent=2, ensure_ascii=False),
        "caption_field": spec.caption_field,
    }


def test_the_templates_compute_the_prompt_id_python_does(spark, run_config, tmp_path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA), encoding="utf-8")
    configs = [
        {},  # the default prompt, no temperature, plain text answers
        {"prompt": TRICKY, "max_tokens": 256, "temperature": 0.2},
        {"prompt": "x", "max_tokens": 1, "temperature": 1.0},  # integer-valued float
        {"prompt": "x", "temperature": 0.0},
        {"prompt": "x", "temperature": 1.2345675},  # half up at the sixth decimal
        {"prompt": TRICKY, "response_schema": str(schema), "caption_field": "résumé"},
        {"prompt": "x", "temperature": 0.7, "response_schema": str(schema)},
    ]
    tables = sink.Tables("c", "c_runs")
    files_sql = question(sql_path.TEMPLATE)
    ids = set()
    for overrides in configs:
        ctx = runner.context(run_config(tmp_path, mode="sql", **overrides), None, tables)
        # As `--mode sql` binds them, and as a SQL job or the notebook gives them: as text.
        bound = sql_path.parameters(ctx)
        for args in ({k: bound[k] for k in notebook.markers(files_sql)}, as_text(ctx.spec)):
            [row] = spark.sql(files_sql, args=args).collect()
            assert row.prompt_id == ctx.prompt_id, (overrides, args)
        ids.add(ctx.prompt_id)
    assert len(ids) == len(configs)

    # The group template, with the pattern --mode sql binds for each rule.
    group_sql = question(sql_path.GROUP_TEMPLATE)
    patterns = []
    for rule in ("folder", r"/(sku-\d+)/[^/]*$"):
        cfg = run_config(tmp_path, mode="sql", group_by=rule, temperature=0.5)
        ctx = runner.context(cfg, None, tables)
        bound = sql_path.group_parameters(ctx)
        [row] = spark.sql(group_sql, args={k: bound[k] for k in notebook.markers(group_sql)}
                          ).collect()
        assert row.prompt_id == ctx.prompt_id not in ids, rule
        patterns.append(bound["group_pattern"])
    assert patterns == [FOLDER_PATTERN, r"/(sku-\d+)/[^/]*$"]
