"""One error vocabulary: each error a user acts on is a usage error (exit 2) or a run error
(exit 1), and the command line prints it as one line with that code."""

from __future__ import annotations

import pytest

from pipeline import cli
from pipeline.config import ConfigError
from pipeline.endpoint.auth import AuthError
from pipeline.endpoint.client import EndpointError
from pipeline.errors import RunError, UsageError, VisionBatchError, first_line
from pipeline.files.source import InputError
from pipeline.images.limits import LimitsError
from pipeline.runs.sql import SqlPathError
from pipeline.spark import SessionError
from pipeline.tables.sink import TableError

RUN_ERRORS = (AuthError, EndpointError, InputError, LimitsError, SessionError, SqlPathError,
              TableError)


def test_every_error_a_user_acts_on_is_one_of_two_kinds() -> None:
    assert issubclass(ConfigError, UsageError) and ConfigError.exit_code == 2
    for error in RUN_ERRORS:
        assert issubclass(error, RunError) and error.exit_code == 1, error
    assert not issubclass(UsageError, RunError) and not issubclass(RunError, UsageError)
    assert all(issubclass(e, VisionBatchError) for e in (UsageError, RunError))


@pytest.mark.parametrize(("error", "code"), [(ConfigError, 2), *[(e, 1) for e in RUN_ERRORS]])
def test_the_command_line_turns_each_into_one_line_and_its_exit_code(
    error: type[Exception], code: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fails(_args: object) -> int:
        raise error("what went wrong, and what to do")

    monkeypatch.setattr(cli, "cmd_estimate", fails)
    assert cli.main(["estimate"]) == code
    err = capsys.readouterr().err
    assert err == "vision-batch: error: what went wrong, and what to do\n"


def test_a_delta_conflict_is_retried_by_its_type_or_on_connect_by_its_text() -> None:
    from delta.exceptions import ConcurrentAppendException, MetadataChangedException

    from pipeline.tables.sink import retriable

    assert retriable(ConcurrentAppendException(message="files were added concurrently"))
    assert retriable(MetadataChangedException(message="the metadata changed"))
    # Spark Connect hands the error over as text, with Delta's error class in it.
    assert retriable(RuntimeError("[DELTA_CONCURRENT_APPEND] files were added"))
    assert not retriable(RuntimeError("[TABLE_OR_VIEW_NOT_FOUND] no such table"))
    assert not retriable(ValueError("files were added concurrently"))


def test_an_error_from_the_jvm_is_named_by_the_jvms_line_not_py4js() -> None:
    """py4j's first line ("An error occurred while calling o62.sql.") says nothing of what
    failed; the JVM's exception, on the next line, does."""
    jvm = RuntimeError("An error occurred while calling o62.sql.\n"
                       ": io.delta.exceptions.ConcurrentAppendException: Files were added.\n"
                       "\tat org.apache.spark.sql.delta.DeltaErrorsBase.x(DeltaErrors.scala:1)")
    assert first_line(jvm) == ("io.delta.exceptions.ConcurrentAppendException: "
                               "Files were added.")
    assert first_line(ValueError("\n  bad value\nmore")) == "bad value"
    assert first_line(ValueError()) == ""
