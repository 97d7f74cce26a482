"""The SQL notebook (Databricks source format), assembled from the templates in sql/.

Each template becomes a cell, verbatim; widgets supply its named parameter markers. The
committed file, sql/caption_notebook.sql, is this module's output (a test keeps them equal):

    python -m pipeline.notebook > sql/caption_notebook.sql
"""

from __future__ import annotations

import re

from pipeline.config import DEFAULT_PROMPT, RunConfig
from pipeline.endpoint.payloads import image_byte_budget
from pipeline.images.limits import load_catalog
from pipeline.images.prepare import target_size
from pipeline.resources import sql_text

CELL = "\n\n-- COMMAND ----------\n\n"
ENDPOINT = "databricks-llama-4-maverick"
TEMPLATES = ("create_captions.sql", "create_runs.sql", "caption_files.sql", "summarize_run.sql")


def markers(sql: str) -> set[str]:
    """Named parameter markers (:name) in a template, comments and strings aside."""
    code = re.sub(r"--[^\n]*|'(?:[^']|'')*'", "", sql)
    return set(re.findall(r"(?<![:\w]):([a-z_]+)", code))


def widget_defaults() -> dict[str, tuple[str, str]]:
    """Widget name -> (default, what it is), in the order they appear in the notebook."""
    config = RunConfig(endpoint=ENDPOINT)
    spec = config.prompt_spec()
    catalog = load_catalog()
    family = catalog.family(ENDPOINT)
    return {
        "input_path": ("/Volumes/main/default/images", "folder or volume to caption"),
        "table": ("main.default.captions", "captions table"),
        "runs_table": ("main.default.captions_runs", "runs table"),
        "endpoint": (ENDPOINT, "serving endpoint"),
        "prompt": (DEFAULT_PROMPT, "instruction sent with every image"),
        "run_id": ("notebook-run-1", "id written on this run's rows: change it per run"),
        "max_tokens": (str(spec.max_tokens), "completion limit"),
        "temperature": ("", "empty: the endpoint's default"),
        "response_format": ("", "empty: plain text answers"),
        "caption_field": ("caption", "field of a structured answer kept as the caption"),
        "formats": (",".join(family.formats), f"formats {ENDPOINT} accepts (models.yml)"),
        "max_bytes": (
            str(image_byte_budget(spec, family.max_request_bytes, family.max_image_bytes)),
            "largest image sent as is: the request limit less base64 and prompt",
        ),
        "max_file_bytes": (str(catalog.input.max_file_bytes), "files above are never read"),
        "image_tokens": (
            str(family.image_tokens(*target_size(100_000, 100_000, family))),
            "estimated tokens per image (the family's formula at its recommended size)",
        ),
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def render() -> str:
    widgets = widget_defaults()
    cells = [
        "-- Databricks notebook source\n"
        "-- MAGIC %md\n"
        "-- MAGIC # vision-batch: caption a volume with ai_query\n"
        "-- MAGIC Set the widgets, then run all. The cells below are the templates in the\n"
        "-- MAGIC repository's `sql/` folder, verbatim; values reach them only as named\n"
        "-- MAGIC parameters (`:name`), never pasted into the SQL text. The rows' prompt id is\n"
        "-- MAGIC computed from the prompt and the parameters that shape the answer, as the CLI\n"
        "-- MAGIC and the SQL job compute it: change the prompt and it is a new question.",
        "\n".join(
            f"-- {about}\nCREATE WIDGET TEXT {name} DEFAULT {_quote(default)};"
            for name, (default, about) in widgets.items()
        ),
    ]
    cells += [f"-- {name}\n{sql_text(name).strip()}" for name in TEMPLATES]
    return CELL.join(cells) + "\n"


if __name__ == "__main__":
    print(render(), end="")
