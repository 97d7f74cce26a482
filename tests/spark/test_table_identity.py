"""A table vision-batch did not make is never touched: refused in one line, left byte for byte
as it was, and no sibling table appears next to it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.tables import sink
from tests import files


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder`, by relative path, with the SHA-256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, tmp_path: Path, table: Path) -> str:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(files.jpeg())
    code = cli.main(["run", "--input", str(tmp_path / "in"), "--table", str(table)])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("vision-batch: error: ") and "\n" not in err, err
    return err


def test_a_delta_table_of_another_program_is_refused_and_left_as_it_was(
    spark, capsys, tmp_path
) -> None:
    theirs = tmp_path / "out" / "theirs"
    spark.createDataFrame([(1, "one")], "id INT, name STRING").write.format("delta").save(
        str(theirs))
    before = snapshot(tmp_path / "out")

    err = refused(capsys, tmp_path, theirs)

    assert "did not make" in err and "path, endpoint, prompt_id" in err, err
    assert snapshot(tmp_path / "out") == before  # no byte changed, no _runs or _groups made
    assert spark.read.format("delta").load(str(theirs)).columns == ["id", "name"]


# Where `_runs` goes, the captions table may be made (it is ours) but holds no row; where
# `_claims` or `_journal` goes, it is made, and the first claim waited for both: no row either.
@pytest.mark.parametrize(("sibling", "keys", "captions_made"),
                         [("_runs", "run_id", False), ("_claims", "unit, run_id", True),
                          ("_journal", "run_id, row_json", True)])
def test_a_foreign_table_where_a_sibling_goes_is_refused_before_any_request(
    spark, capsys, tmp_path, sibling: str, keys: str, captions_made: bool
) -> None:
    theirs = tmp_path / "out" / f"captions{sibling}"
    spark.createDataFrame([(1,)], "id INT").write.format("delta").save(str(theirs))
    before = snapshot(theirs)

    err = refused(capsys, tmp_path, tmp_path / "out" / "captions")

    assert f"captions{sibling}" in err and keys in err, err
    assert snapshot(theirs) == before
    made = tmp_path / "out" / "captions"
    assert made.exists() or not captions_made
    if made.exists():
        assert spark.read.format("delta").load(str(made)).count() == 0


def test_every_table_the_program_makes_carries_the_mark(spark, serve, run_config,
                                                        tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(files.jpeg())
    tables = sink.resolve(spark, run_config(tmp_path / "in").table)
    sink.ensure_runs(spark, tables)
    sink.ensure_groups(spark, tables)
    sink.ensure_claims(spark, tables)
    sink.ensure_journal(spark, tables)
    for name in (tables.captions, tables.runs, tables.groups, tables.claims, tables.journal):
        properties = {r["key"]: r["value"] for r in spark.sql(
            "SHOW TBLPROPERTIES IDENTIFIER(:t)", args={"t": name}).collect()}
        assert properties.get(sink.MARK) == "1", name
