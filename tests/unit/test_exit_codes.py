"""Exit codes a scheduler can act on: a run that finished with more failed rows than
--max-failed-share allows exits 3 with one line naming the counts and the error classes;
invalid rows are neither failures nor part of the share."""

from __future__ import annotations

import pytest

from pipeline import cli
from pipeline.errors import RunError, TooManyFailed
from pipeline.outcomes import RunStatus
from pipeline.runs.context import RunResult


def finished(ok: int = 0, invalid: int = 0, **failed: int) -> RunResult:
    """A run's totals as its rows would make them: `failed` by error class."""
    result = RunResult("0f3c", "main.vision.captions", "p-1234")
    result.add([{"status": "ok", "attempts": 1}] * ok)
    result.add([{"status": "invalid", "error_class": "not_an_image", "attempts": 0}] * invalid)
    for error_class, count in failed.items():
        result.add([{"status": "failed", "error_class": error_class, "attempts": 1}] * count)
    return result


def test_the_line_names_the_counts_the_share_the_threshold_and_the_error_classes() -> None:
    result = finished(ok=426, invalid=30, auth=474)
    assert result.too_many_failed(0.05) == (
        "474 of 900 rows failed in run 0f3c (52.7%, over --max-failed-share 5%): auth 474")
    assert result.exit_code_for(0.05) == 3
    mixed = finished(ok=90, timeout=3, server_error=7)
    assert mixed.too_many_failed(0.095) == (
        "10 of 100 rows failed in run 0f3c (10.0%, over --max-failed-share 9.5%): "
        "server_error 7, timeout 3")


def test_the_summary_of_a_run_over_the_share_does_not_say_it_succeeded() -> None:
    result = finished(ok=426, invalid=30, auth=474)
    result.status = RunStatus.SUCCEEDED  # as the runs table keeps it: the run finished
    assert cli.summary(result).splitlines()[0].startswith("run 0f3c: succeeded in ")
    over = cli.summary(result, "finished, too many rows failed,").splitlines()[0]
    assert over.startswith("run 0f3c: finished, too many rows failed, in ")


@pytest.mark.parametrize(("result", "threshold", "code"), [
    (finished(ok=95, server_error=5), 0.05, 0),  # at the threshold: not over it
    (finished(ok=94, server_error=6), 0.05, 3),
    (finished(ok=0, server_error=10), 1.0, 0),  # 1 never fails on failures
    (finished(ok=99, timeout=1), 0.0, 3),  # 0: any failure
    (finished(ok=10), 0.0, 0),
    (finished(), 0.05, 0),  # nothing to do
    (finished(invalid=50), 0.0, 0),  # invalid files are not failures...
    (finished(ok=5, invalid=1000, timeout=1), 0.2, 0),  # ...nor in the share: 1 of 6
    (finished(ok=4, invalid=1000, timeout=1), 0.2, 0),  # 1 of 5: at it
    (finished(ok=3, invalid=1000, timeout=1), 0.2, 3),  # 1 of 4
])
def test_the_rule(result: RunResult, threshold: float, code: int) -> None:
    assert result.exit_code_for(threshold) == code
    assert (result.too_many_failed(threshold) is None) == (code == 0)


def test_too_many_failed_is_a_run_error_with_code_3_and_carries_the_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = finished(ok=1, auth=9)
    line = result.too_many_failed(0.05)
    assert line is not None

    def fails(_args: object) -> int:
        raise TooManyFailed(line, result)

    assert issubclass(TooManyFailed, RunError)
    monkeypatch.setattr(cli, "cmd_estimate", fails)
    assert cli.main(["estimate"]) == 3
    assert capsys.readouterr().err == f"vision-batch: error: {line}\n"


@pytest.mark.parametrize("share", ["1.5", "-0.2", "nan"])
def test_a_share_outside_0_to_1_is_a_usage_error_before_anything_starts(
    share: str, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--max-failed-share", share]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vision-batch: error: max_failed_share must be a share from 0 to 1")
    assert list(tmp_path.iterdir()) == []  # no table, no folder


def test_the_summary_names_the_prompt_id_just_before_the_table() -> None:
    lines = cli.summary(finished(ok=3, timeout=1)).splitlines()
    assert lines[-2:] == ["  prompt  p-1234", "  table   main.vision.captions"]
