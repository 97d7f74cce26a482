"""One vocabulary for outcomes: the Python paths, the SQL templates and the docs use the same
statuses and error classes (pipeline/outcomes.py), and the words travel as plain text."""

from __future__ import annotations

import pickle
import re

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.endpoint.client import RETRIABLE, classify_status
from pipeline.outcomes import FAILED_CLASSES, INVALID_CLASSES, ErrorClass, RunStatus, Status
from pipeline.resources import sql_text
from tests.conftest import REPO

TEMPLATES = ("caption_files.sql", "caption_groups.sql")


def _cases(sql: str, column: str) -> list[str]:
    """The text of each CASE expression that ends `AS <column>`, in order."""
    cases = []
    for end in (m.start() for m in re.finditer(rf"END\s+AS\s+{column}\b", sql)):
        start = sql.rfind("CASE", 0, end)
        while sql.count("CASE", start, end) > sql.count("END", start, end) + 1:
            start = sql.rfind("CASE", 0, start)
        cases.append(sql[start:end])
    assert cases, column
    return cases


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_sql_path_writes_the_same_statuses_and_failure_classes(template: str) -> None:
    sql = sql_text(template)
    written = set(re.findall(r"(?:THEN|ELSE)\s+'([a-z_]+)'", "".join(_cases(sql, "status"))))
    assert written == {s.value for s in Status}
    compared = set(re.findall(r"status\s*(?:=|<>)\s*'([a-z_]+)'", sql))
    compared |= {w for group in re.findall(r"status IN \(([^)]*)\)", sql)
                 for w in re.findall(r"'([a-z_]+)'", group)}
    assert compared and compared <= {s.value for s in Status}
    # Every class a failed request gets on the UDF path, and only those, on the SQL path too.
    classify = next(c for c in _cases(sql, "error_class") if "RLIKE" in c)
    failures = set(re.findall(r"THEN\s+'([a-z_]+)'|ELSE\s+'([a-z_]+)'", classify))
    assert {a or b for a, b in failures} == {c.value for c in FAILED_CLASSES}


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_sql_checks_reject_with_the_udf_paths_invalid_classes(template: str) -> None:
    sql = sql_text(template)
    checks = sql[sql.index("checked AS"):]
    found = set(re.findall(r"THEN\s+'([a-z_]+)'", _cases(checks, "error_class")[0]))
    assert found and found <= {c.value for c in INVALID_CLASSES}


def test_the_docs_list_every_error_class_under_its_status() -> None:
    tables = (REPO / "docs" / "tables.md").read_text()
    line = re.search(r"\n`invalid` rows (.*?)\n\n`failed` rows (.*?)\n\n", tables, re.S)
    assert line, "docs/tables.md: the paragraphs of `invalid` and `failed` rows"
    invalid, failed = (set(re.findall(r"`([a-z_]+)`", part)) for part in line.groups())
    assert invalid == {c.value for c in INVALID_CLASSES}
    assert failed == {c.value for c in FAILED_CLASSES}


def test_every_class_is_either_invalid_or_failed_and_retries_only_failures() -> None:
    assert INVALID_CLASSES | FAILED_CLASSES == set(ErrorClass)
    assert not INVALID_CLASSES & FAILED_CLASSES
    assert RETRIABLE < FAILED_CLASSES
    assert {classify_status(s) for s in (400, 401, 403, 408, 429, 500, 503)} <= FAILED_CLASSES


@pytest.mark.parametrize("word", [Status.OK, ErrorClass.TOO_LARGE, RunStatus.INTERRUPTED])
def test_a_word_is_its_text_in_every_place_a_row_goes(word: str) -> None:
    text = str(word.value)  # type: ignore[attr-defined]
    assert word == text and hash(word) == hash(text) and {text: 1}[word] == 1
    assert str(word) == f"{word}" == text
    # Spark's JVM side unpickles rows without our module: a word must pickle as plain text.
    back = pickle.loads(pickle.dumps(word))
    assert type(back) is str and back == text
    assert pa.array([word]).to_pylist() == [text]
    assert pa.Table.from_pandas(pd.DataFrame({"status": [word]})).column(0).to_pylist() == [text]
