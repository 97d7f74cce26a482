"""Every SQL snippet of the docs is SQL Spark reads: each statement of each ```sql block goes
through the session's parser (no table is looked up, nothing runs). Which tables and columns
the queries name is checked without Spark, in tests/unit/test_docs.py."""

from __future__ import annotations

import re

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


# Unity Catalog's GRANT, which Spark's own parser knows only to refuse ("GRANT is not valid"):
# checked against its documented form instead, with the privileges the docs may name.
GRANT = re.compile(r"GRANT (?P<privileges>[A-Z ,]+) ON (?P<kind>CATALOG|SCHEMA|VOLUME|TABLE) "
                   r"[\w.]+ TO `[^`]+`")
PRIVILEGES = {"USE CATALOG", "CREATE SCHEMA", "USE SCHEMA", "SELECT", "MODIFY", "CREATE TABLE",
              "CREATE VOLUME", "READ VOLUME", "WRITE VOLUME", "EXECUTE", "ALL PRIVILEGES"}


def grant_problem(statement: str) -> str | None:
    """Why a GRANT statement is not Unity Catalog's form, or None."""
    code = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
    found = GRANT.fullmatch(code.strip())
    if found is None:
        return f"not GRANT <privileges> ON <securable> <name> TO `<principal>`: {code.strip()}"
    unknown = {p.strip() for p in found["privileges"].split(",")} - PRIVILEGES
    return f"unknown privileges {sorted(unknown)}" if unknown else None


def test_a_grant_is_checked_against_unity_catalogs_form() -> None:
    assert grant_problem("GRANT READ VOLUME ON VOLUME main.s.v TO `team`") is None
    assert grant_problem("GRANT READ FILES ON VOLUME main.s.v TO `team`") is not None
    assert grant_problem("GRANT SELECT main.s TO `team`") is not None


def test_the_parser_refuses_what_is_not_sql(spark: SparkSession) -> None:
    parser = spark._jsparkSession.sessionState().sqlParser()
    with pytest.raises(Exception, match="PARSE_SYNTAX_ERROR"):
        parser.parsePlan("SELEC path FROM captions")


@pytest.mark.parametrize("snippet", SQL)
def test_every_sql_snippet_parses(spark: SparkSession, snippet: Snippet) -> None:
    parser = spark._jsparkSession.sessionState().sqlParser()
    for statement in statements(snippet.text):
        if re.match(r"(--[^\n]*\n)*GRANT ", statement):
            problem = grant_problem(statement)
            assert problem is None, f"{snippet.where}: {problem}"
            continue
        try:
            parser.parsePlan(statement)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0]
            raise AssertionError(f"{snippet.where}: {first}\n{statement}") from None
