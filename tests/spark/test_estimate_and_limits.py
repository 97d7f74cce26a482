"""The dry run, and files whose size decides their fate before any byte is read."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from pipeline import runs as runner
from pipeline.endpoint.payloads import image_byte_budget
from pipeline.estimate import estimate, render
from pipeline.images.limits import load_catalog
from pipeline.images.prepare import Prepared, prepare
from tests import files


def test_estimate_counts_what_a_run_would_send_and_refuse_without_a_request(
    spark, run_config, tmp_path
) -> None:
    cases = files.hostile_cases()
    files.write_folder(tmp_path / "in", cases)
    (tmp_path / "in" / "copy of plain photo.jpg").write_bytes(cases[0].data)  # a duplicate
    cfg = run_config(tmp_path / "in", endpoint="databricks-claude-sonnet-4",
                     max_files_per_batch=7)
    result = estimate(cfg, spark)

    family = load_catalog().family(cfg.endpoint)
    budget = image_byte_budget(cfg.prompt_spec(), family.max_request_bytes,
                               family.max_image_bytes)
    valid = [c for c in cases if c.status == "ok"]
    expected_tokens = 0
    for case in valid:
        prepared = prepare(case.data, family, load_catalog().input, budget)
        assert isinstance(prepared, Prepared)
        expected_tokens += family.image_tokens(prepared.sent_width, prepared.sent_height)
    assert result.listed == len(cases) + 1 and result.skipped == 0
    assert result.sendable == len(valid) + 1
    assert result.requests == len(valid)  # the duplicate costs nothing
    assert result.image_tokens == expected_tokens
    assert result.error_classes == Counter(c.error_class for c in cases if c.error_class)
    assert result.family == "claude"
    text = render(result)
    assert "decompression_bomb" in text and f"{len(valid)} requests" in text
    # Packed five to a request, the same images need a fifth of the requests.
    packed = estimate(replace(cfg, images_per_request=5), spark)
    assert packed.requests == -(-len(valid) // 5) and packed.image_tokens == expected_tokens
    assert "up to 5 images" in render(packed)
    # Given the endpoint's limits, it says how long the run takes at the binding one.
    limited = estimate(replace(cfg, max_itpm=1_600, max_qph=6_000), spark)
    assert limited.limits == {"itpm": 1_600, "qph": 6_000}
    minutes = limited.input_tokens / 1_600
    assert limited.minutes_at_limits() == [("itpm", minutes), ("qph", len(valid) / 100)]
    assert f"about {minutes:.0f} min at 1,600 input tokens per minute (the binding limit)" \
        in render(limited)
    # A dry run creates no table.
    assert not (tmp_path / "tables").exists()


def test_size_limits_are_decided_from_the_listing(spark, serve, run_config, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    with open(folder / "huge.jpg", "wb") as f:  # over input.max_file_bytes (50 MiB), sparse
        f.truncate(51 * 2**20)
    (folder / "forty megabytes of noise.jpg").write_bytes(b"\x17" * (40 * 2**20))
    (folder / "empty.png").write_bytes(b"")
    (folder / "ok.jpg").write_bytes(files.jpeg())
    endpoint, creds = serve()
    cfg = run_config(folder)
    runner.run(cfg, creds, spark, progress=lambda _: None)
    rows = {r.path.rsplit("/", 1)[-1]: r for r in
            spark.read.format("delta").load(cfg.table).collect()}
    assert (rows["huge.jpg"].status, rows["huge.jpg"].error_class) == ("invalid", "too_large")
    # Never read: no hash of its bytes exists.
    assert rows["huge.jpg"].content_sha256 is None and rows["empty.png"].content_sha256 is None
    assert rows["huge.jpg"].size_bytes == 51 * 2**20
    assert rows["empty.png"].error_class == "empty_file"
    assert rows["forty megabytes of noise.jpg"].error_class == "not_an_image"
    assert rows["forty megabytes of noise.jpg"].content_sha256 is not None
    assert rows["ok.jpg"].status == "ok"
    assert endpoint.stats()["requests"] == 1


def test_earlier_answers_to_the_same_prompt_say_what_a_lower_max_tokens_would_cut(
    spark, run_config, tmp_path
) -> None:
    import json

    from pipeline.estimate import answer_lengths
    from pipeline.runs.context import context

    cfg = run_config(tmp_path, endpoint="ep", max_tokens=100)
    ctx = context(cfg)
    old = {"prompt": cfg.prompt, "max_tokens": 300, "caption_field": "caption"}
    runs = [{"prompt_id": "old", "config_json": json.dumps(old)},
            {"prompt_id": "other", "config_json": json.dumps({**old, "prompt": "Tags?"})}]
    rows = (
        # At max_tokens 300: 40 complete answers of 50..245 tokens, 2 cut off at 300.
        [("ep", "old", "ok", None, "endpoint", 50 + 5 * i) for i in range(40)]
        + [("ep", "old", "failed", "cut_off", "endpoint", 300)] * 2
        # Not answers to this prompt, or not one answer's length: left out.
        + [("ep", "other", "ok", None, "endpoint", 900)] * 5
        + [("ep", "old", "ok", None, "apportioned", 900)] * 5
        + [("other-ep", "old", "ok", None, "endpoint", 900)] * 5
        # This prompt_id (max_tokens 100): 1 cut off, which says only "more than 100".
        + [("ep", ctx.prompt_id, "failed", "cut_off", "endpoint", 100)])
    captions = spark.createDataFrame(rows, "endpoint STRING, prompt_id STRING, status STRING, "
                                           "error_class STRING, usage_source STRING, "
                                           "completion_tokens INT")
    lengths = answer_lengths(captions, runs, ctx, 100)
    # Longer than 100: the 29 complete ones of 105..245, both cut at 300, the one cut at 100.
    assert (lengths.answers, lengths.longer) == (43, 32)
    assert 230 <= lengths.p95 <= 245
    # Asked at 400 a request for packs of 2 (200 each): only the two cut at 300 count.
    assert answer_lengths(captions, runs, ctx, 200).longer == 9 + 2
