"""Every table a run writes opens in delta-rs (`deltalake`: what polars, DuckDB and pandas
users read Delta with), with the rows Spark sees: no table feature it cannot read."""

from __future__ import annotations

from deltalake import DeltaTable

from pipeline import runs as runner
from tests import files


def test_captions_runs_groups_and_claims_tables_open_in_delta_rs(spark, serve, run_config,
                                                          tmp_path) -> None:
    folder = files.write_photos(tmp_path / "in" / "a", 3, "p{}.jpg", lambda i: (20 + i, 20))
    (tmp_path / "in" / "b").mkdir()
    (tmp_path / "in" / "b" / "q.jpg").write_bytes(files.jpeg())
    _, creds = serve()
    cfg = run_config(folder.parent, group_by="folder")
    runner.run(cfg, creds, spark, progress=lambda _: None)
    runner.run(cfg, creds, spark, progress=lambda _: None)  # a second run: MERGEd rows too

    # The claims (row tracking on): the first run's two groups, its lease and the end of it.
    for suffix, rows in (("", 4), ("_runs", 2), ("_groups", 2), ("_claims", 4)):
        location = cfg.table + suffix
        read = DeltaTable(location).to_pandas()
        assert len(read) == rows == spark.read.format("delta").load(location).count(), suffix
    assert set(DeltaTable(cfg.table).to_pandas()["status"]) == {"ok"}
    groups = DeltaTable(cfg.table + "_groups").to_pandas()
    assert set(groups["status"]) == {"ok"} and groups["answer"].notna().all()
