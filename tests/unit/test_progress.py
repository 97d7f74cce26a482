"""Progress reports: a readable line in a terminal, one JSON object per line on Databricks."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

from pipeline import progress


def running(**overrides) -> SimpleNamespace:
    base = dict(run_id="r1", listed=120, skipped=20, seconds=12.5, images_per_s=4.0,
                statuses=Counter({"ok": 45, "invalid": 3, "failed": 2}),
                error_classes=Counter({"timeout": 2, "corrupt_image": 3}), waited=Counter())
    return SimpleNamespace(**{**base, **overrides})


def test_a_batch_line_says_batches_files_speed_and_errors_so_far() -> None:
    line = progress.update("batch", running(), pending=100, batches=4, batch=2,
                           files_done=50).line()
    assert line == ("batch 2/4: 50/100 files, 45 ok, 3 invalid, 2 failed "
                    "(corrupt_image 3, timeout 2); 4.0 images/s since the start, 12.5 s")


def test_a_batch_line_says_how_long_the_token_limits_held_requests_back() -> None:
    result = running(waited=Counter({"itpm": 31.26, "otpm": 0.0, "qph": 2.0}))
    update = progress.update("batch", result, pending=100, batches=4, batch=2, files_done=50)
    assert update.line().endswith("12.5 s, held back 31.3 s by input tokens per minute, "
                                  "2.0 s by queries per hour")
    assert update.record()["waited"] == {"itpm": 31.26, "otpm": 0.0, "qph": 2.0}


def test_batches_of_whole_groups_are_counted_as_an_estimate() -> None:
    update = progress.update("batch", running(), pending=100, batches=4, batch=5,
                             files_done=100, approximate=True)
    assert update.line().startswith("batch 5/~4: 100/100 files")
    planned = progress.update("planned", running(), pending=100, batches=4, approximate=True)
    assert "100 to process in about 4 batch(es)" in planned.line()


def test_the_plan_line_says_what_is_left() -> None:
    line = str(progress.update("planned", running(), pending=100, batches=4))
    assert line == "120 files listed, 20 already done, 100 to process in 4 batch(es) (12.5 s)"


def test_structured_lines_are_json_with_the_same_facts(capsys) -> None:
    progress.structured(progress.update("batch", running(), 100, 4, 2, files_done=50))
    record = json.loads(capsys.readouterr().out)
    assert record["event"] == "vision_batch.batch" and record["run_id"] == "r1"
    assert (record["batch"], record["batches"], record["files_done"]) == (2, 4, 50)
    assert record["statuses"] == {"ok": 45, "invalid": 3, "failed": 2}
    assert record["errors"] == {"timeout": 2, "corrupt_image": 3}
    assert record["images_per_s"] == 4.0


def test_databricks_runs_get_structured_lines(monkeypatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert progress.reporter() is progress.terminal
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert progress.reporter() is progress.structured
