"""One error vocabulary. Every error that is the user's to act on is a VisionBatchError; the
command line prints it as one line and exits with its code, and `pipeline.caption()` raises
it (docs/command-line.md, "Exit codes").

    VisionBatchError
      UsageError     exit 2: the command, a flag, the conf or a file it names is wrong; it
                     is raised before Spark starts, and nothing is created
      RunError       exit 1: the run cannot go on here (the input, a table, the endpoint,
                     the credentials, the Spark session, the models file)
        TooManyFailed  exit 3: the run finished, but the share of rows that failed in it
                     passed --max-failed-share; its answers are kept (`.result`)

Anything else (a Spark or JVM failure) exits 1 with its first line (`first_line`). Ctrl-C
and SIGTERM exit 130 and 143 (pipeline/interrupts.py). A run that finished within its
threshold, or had nothing to do, exits 0.
"""

from __future__ import annotations

from typing import Any

# How py4j begins every error the JVM raises; the line after it says what the error is.
_PY4J_CALL = "An error occurred while calling "


class VisionBatchError(Exception):
    exit_code = 1


class UsageError(VisionBatchError, ValueError):
    exit_code = 2


class RunError(VisionBatchError, RuntimeError):
    exit_code = 1


class TooManyFailed(RunError):
    """The run finished with more failed rows than --max-failed-share allows. It carries the
    run's result (a RunResult): its answers are in the table, and a rerun asks the failed
    rows again."""

    exit_code = 3

    def __init__(self, message: str, result: Any) -> None:
        # `result` is a pipeline.runs.context.RunResult: errors import no package of ours.
        super().__init__(message)
        self.result = result


def first_line(exc: BaseException) -> str:
    """The line of an unexpected error that says what went wrong: its first, or for an error
    py4j brings from the JVM ("An error occurred while calling o62.sql."), the JVM's own."""
    lines = [line.strip().removeprefix(": ") for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith(_PY4J_CALL):
        return lines[1]
    return lines[0] if lines else ""
