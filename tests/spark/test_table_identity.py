"""A table vision-batch did not make is never touched: refused in one line, left byte for byte
as it was, and no sibling table appears next to it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline import cli, sink
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


def test_a_foreign_table_where_the_runs_table_goes_is_refused_before_any_request(
    spark, capsys, tmp_path
) -> None:
    runs = tmp_path / "out" / "captions_runs"
    spark.createDataFrame([(1,)], "id INT").write.format("delta").save(str(runs))
    before = snapshot(runs)

    err = refused(capsys, tmp_path, tmp_path / "out" / "captions")

    assert "captions_runs" in err and "run_id" in err, err
    assert snapshot(runs) == before
    made = tmp_path / "out" / "captions"
    if made.exists():  # the captions table may be made (it is ours), but holds no row
        assert spark.read.format("delta").load(str(made)).count() == 0


def test_every_table_the_program_makes_carries_the_mark(spark, serve, run_config,
                                                        tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(files.jpeg())
    tables = sink.resolve(spark, run_config(tmp_path / "in").table)
    sink.ensure_runs(spark, tables)
    sink.ensure_groups(spark, tables)
    sink.ensure_claims(spark, tables)
    for name in (tables.captions, tables.runs, tables.groups, tables.claims):
        properties = {r["key"]: r["value"] for r in spark.sql(
            "SHOW TBLPROPERTIES IDENTIFIER(:t)", args={"t": name}).collect()}
        assert properties.get(sink.MARK) == "1", name


def test_a_foreign_table_where_the_claims_table_goes_is_refused_before_any_request(
    spark, capsys, tmp_path
) -> None:
    claims = tmp_path / "out" / "captions_claims"
    spark.createDataFrame([(1,)], "id INT").write.format("delta").save(str(claims))
    before = snapshot(claims)

    err = refused(capsys, tmp_path, tmp_path / "out" / "captions")

    assert "captions_claims" in err and "unit, run_id" in err, err
    assert snapshot(claims) == before
    made = tmp_path / "out" / "captions"  # the first batch waited for the claims table
    assert spark.read.format("delta").load(str(made)).count() == 0
