"""`--sample N` and `--sample-fraction F`: the same files for every endpoint and prompt, a
larger sample holding a smaller one, and groups sampled whole."""

from __future__ import annotations

from dataclasses import replace

from pipeline import runs as runner
from pipeline.estimate import estimate
from pipeline.files import source
from pipeline.runs import plan
from pipeline.runs.context import context
from tests import files


def planned(spark, cfg) -> list[str]:
    """The files a run of `cfg` would ask, by name."""
    planned = plan.files(spark, context(cfg), source.list_files(spark, cfg.input))
    return [e.path.rsplit("/", 1)[-1] for batch in planned.stream for e in batch.entries]


def test_a_sample_is_the_same_every_time_and_a_larger_one_holds_a_smaller(
    spark, run_config, tmp_path
) -> None:
    (tmp_path / "in").mkdir()
    for i in range(40):
        (tmp_path / "in" / f"p{i:02}.jpg").write_bytes(files.jpeg(32 + i, 24))
    cfg = run_config(tmp_path / "in")
    five, ten = planned(spark, replace(cfg, sample=5)), planned(spark, replace(cfg, sample=10))
    assert len(five) == 5 and len(ten) == 10 and set(five) < set(ten)
    assert planned(spark, replace(cfg, sample=5)) == five  # deterministic
    # Another prompt or endpoint asks the same files; another seed, others.
    assert planned(spark, replace(cfg, sample=5, prompt="Name the colours.")) == five
    assert planned(spark, replace(cfg, sample=5, sample_seed=7)) != five
    # A share of the files: a larger share holds a smaller one.
    third = planned(spark, replace(cfg, sample_fraction=0.3))
    most = planned(spark, replace(cfg, sample_fraction=0.8))
    assert 4 <= len(third) <= 20 and set(third) < set(most) and len(most) < 40
    assert len(planned(spark, replace(cfg, sample_fraction=1.0))) == 40
    # `estimate` plans the same sample.
    assert estimate(replace(cfg, sample=5), spark).sendable == 5


def test_groups_are_sampled_whole_and_a_larger_sample_resumes_the_smaller(
    spark, serve, run_config, tmp_path
) -> None:
    for g in range(6):
        folder = tmp_path / "in" / f"sku{g}"
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"v{i}.jpg").write_bytes(files.jpeg(40 + g, 30 + i))
    endpoint, creds = serve()
    cfg = run_config(tmp_path / "in", group_by="folder", sample=2)
    lines: list[str] = []
    runner.run(cfg, creds, spark, progress=lambda u: lines.append(str(u)))
    assert "a sample of 2 (seed 0)" in lines[0]

    def groups_and_members() -> tuple[set[str], dict[str, int]]:
        rows = spark.read.format("delta").load(cfg.table).collect()
        members: dict[str, int] = {}
        for r in rows:
            members[r.group_key] = members.get(r.group_key, 0) + 1
        done = {r.group_key for r in spark.read.format("delta").load(cfg.table + "_groups")
                .collect()}
        return done, members

    two, members = groups_and_members()
    assert len(two) == 2 and members == dict.fromkeys(two, 3)  # each group whole
    # A larger sample keeps the first two (not asked again) and adds two more.
    before = endpoint.stats()["requests"]
    result = runner.run(replace(cfg, sample=4), creds, spark, progress=lambda _: None)
    four, members = groups_and_members()
    assert two < four and len(four) == 4 and members == dict.fromkeys(four, 3)
    assert result.skipped == 6 and endpoint.stats()["requests"] - before == 2
