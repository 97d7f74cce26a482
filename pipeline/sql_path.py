"""`--mode sql`: the templates in sql/ do the work, with ai_query, in one MERGE statement.

The same template text a SQL notebook or SQL task runs; this module only binds its named
parameters from the run's configuration and, off Databricks, registers the local stand-ins
for `read_files` and `ai_query` (pipeline/sql_functions.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pyspark.sql import SparkSession

from pipeline import source, sql_functions
from pipeline.images import target_size
from pipeline.resources import sql_text
from pipeline.run import RunContext, RunResult
from pipeline.spark import on_databricks

TEMPLATE = "caption_files.sql"


def parameters(ctx: RunContext) -> dict[str, Any]:
    """Values for every marker of sql/caption_files.sql; bound, never formatted into text."""
    spec, family = ctx.spec, ctx.family
    response_format = None
    if spec.response_schema is not None:
        response_format = json.dumps(
            {"type": "json_schema",
             "json_schema": {"name": "answer", "schema": spec.response_schema, "strict": True}}
        )
    # SQL cannot measure an image: estimate at the family's recommended size (an upper bound).
    recommended = target_size(100_000, 100_000, family)
    return {
        "table": ctx.tables.captions,
        "input_path": ctx.config.input,
        "endpoint": ctx.endpoint,
        "prompt": spec.prompt,
        "prompt_id": ctx.prompt_id,
        "run_id": ctx.run_id,
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "response_format": response_format,
        "caption_field": spec.caption_field,
        "formats": ",".join(family.formats),
        "max_bytes": ctx.image_budget,
        "max_file_bytes": ctx.catalog.input.max_file_bytes,
        "image_tokens": family.image_tokens(*recommended),
    }


def caption(
    spark: SparkSession, ctx: RunContext, result: RunResult, progress: Callable[[str], None]
) -> None:
    result.listed = source.list_files(spark, ctx.config.input).count()
    if result.listed == 0:
        raise source.InputError(f"--input {ctx.config.input} holds no files")
    if not on_databricks():
        sql_functions.register(spark, ctx.plan_client.credentials, ctx.config)
    progress(f"{result.listed} files listed; captioning with ai_query ({TEMPLATE})")
    began = time.perf_counter()
    spark.sql(sql_text(TEMPLATE), args=parameters(ctx))
    result.seconds = time.perf_counter() - began
