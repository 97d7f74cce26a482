"""Whole runs paced to a pay-per-token endpoint's limits, against the local endpoint enforcing
them. The limits' minute is 2 s here (VISION_BATCH_MINUTE_S), for the run and the endpoint."""

from __future__ import annotations

import pytest

from pipeline import runs as runner
from tests import files

PROMPT = "Describe this image. " * 19  # about 100 tokens, beside 2 tokens of a small image


@pytest.fixture(autouse=True)
def short_minute(monkeypatch) -> None:
    monkeypatch.setenv("VISION_BATCH_MINUTE_S", "2")


def test_a_run_paced_to_the_input_token_limit_is_never_turned_away(
    spark, serve, run_config, tmp_path
) -> None:
    (tmp_path / "in").mkdir()
    for i in range(40):
        (tmp_path / "in" / f"p{i:02}.jpg").write_bytes(files.jpeg(32 + i, 24))
    # The run's largest request (a 1,533-token image and the prompt) must fit the minute.
    endpoint, creds = serve(max_itpm=1700)
    lines: list[str] = []
    cfg = run_config(tmp_path / "in", prompt=PROMPT, max_itpm=1700)
    result = runner.run(cfg, creds, spark, progress=lambda u: lines.append(str(u)))

    stats = endpoint.stats()
    assert result.statuses["ok"] == 40 and stats["requests"] == 40
    assert stats["over_itpm"] == 0  # no request turned away
    # 40 requests of ~102 tokens at 1,700 a minute: the line waited two minutes at least.
    assert result.waited["itpm"] >= 2 * 2.0 * 0.9
    [run_row] = spark.read.format("delta").load(cfg.table + "_runs").collect()
    assert run_row.waited_itpm_s == round(result.waited["itpm"], 1)
    assert (run_row.waited_otpm_s, run_row.waited_qph_s) == (0.0, 0.0)
    assert any("held back" in line and "by input tokens per minute" in line for line in lines)


def test_a_group_larger_than_the_minute_fails_as_rejected_and_the_others_are_answered(
    spark, serve, run_config, tmp_path
) -> None:
    for i in range(3):  # 3 images of 640 tokens: 1,920 with the prompt, over 1,700
        folder = tmp_path / "in" / "big"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"b{i}.jpg").write_bytes(files.jpeg(800 + i, 600))
    (tmp_path / "in" / "small").mkdir()
    for i in range(2):
        (tmp_path / "in" / "small" / f"s{i}.jpg").write_bytes(files.jpeg(40 + i, 30))
    endpoint, creds = serve(max_itpm=1700)
    cfg = run_config(tmp_path / "in", group_by="folder", max_itpm=1700)
    runner.run(cfg, creds, spark, progress=lambda _: None)

    groups = {r.group_key.rsplit("/", 1)[-1]: r
              for r in spark.read.format("delta").load(cfg.table + "_groups").collect()}
    assert groups["small"].status == "ok"
    big = groups["big"]
    assert (big.status, big.error_class, big.attempts) == ("failed", "rejected", 0)
    assert "--max-itpm" in big.error_message and "1,700 input tokens per minute" in \
        big.error_message
    assert endpoint.stats()["requests"] == 1  # only the small group was sent
