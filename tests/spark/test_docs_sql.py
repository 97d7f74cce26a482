"""Every SQL snippet of the docs is SQL Spark reads: each statement of each ```sql block goes
through the session's parser (no table is looked up, nothing runs). Which tables and columns
the queries name is checked without Spark, in tests/unit/test_docs.py."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from tests.unit.test_docs import SNIPPETS, Snippet

SQL = [pytest.param(s, id=s.where) for s in SNIPPETS if s.lang == "sql"]


def statements(text: str) -> list[str]:
    """The block's statements: split where a line ends with `;`."""
    found, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            found.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if "".join(current).strip():
        found.append("\n".join(current))
    return [s for s in found if s.strip()]


def test_the_parser_refuses_what_is_not_sql(spark: SparkSession) -> None:
    parser = spark._jsparkSession.sessionState().sqlParser()
    with pytest.raises(Exception, match="PARSE_SYNTAX_ERROR"):
        parser.parsePlan("SELEC path FROM captions")


@pytest.mark.parametrize("snippet", SQL)
def test_every_sql_snippet_parses(spark: SparkSession, snippet: Snippet) -> None:
    parser = spark._jsparkSession.sessionState().sqlParser()
    for statement in statements(snippet.text):
        try:
            parser.parsePlan(statement)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0]
            raise AssertionError(f"{snippet.where}: {first}\n{statement}") from None
