"""The words outcomes are written in: a row's status, the class of error behind an `invalid`
or `failed` row, and a run's status. The tables, the SQL templates, the report and the progress
lines all use these; docs/tables.md ("Statuses and error classes") says what each means to a user.

Each is a string enum: a member equals its text ("ok" == Status.OK), formats as its text, and
pickles as plain text, so rows carry it into pandas, Arrow and Spark (whose JVM side unpickles
rows without this module) exactly as they carried the strings before.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class _Word(str, Enum):
    """A member that is its text wherever it goes."""

    def __str__(self) -> str:
        return str(self.value)

    def __reduce_ex__(self, protocol: Any) -> tuple[type[str], tuple[str]]:
        return str, (str(self.value),)


class Status(_Word):
    """One row's outcome, in the captions and groups tables."""

    OK = "ok"  # answered
    INVALID = "invalid"  # never sent: the file breaks a limit preparing cannot fix
    FAILED = "failed"  # sent, and no usable answer after the retries


# Not a status of any table: an answer row put off for the run's reasons (credentials refused
# after a refresh, an endpoint outage), never written. The run asks it again once that is
# mended (pipeline/runs/recovery.py), or, past a bound, writes it `failed`.
DEFERRED = "deferred"

# Statuses a rerun does not ask again: an answer, or a file that cannot be sent as it is.
DONE = (Status.OK, Status.INVALID)


class ErrorClass(_Word):
    """Why a row is not `ok`."""

    # invalid: found while checking and preparing the file, before any request
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_LARGE = "too_large"
    NO_GROUP = "no_group"  # `--group-by`: a file its rule puts in no group
    NO_VALID_IMAGE = "no_valid_image"  # a group none of whose files can be sent
    # failed: what the endpoint (or the way to it) did with the request
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"
    CONNECTION_ERROR = "connection_error"
    BAD_RESPONSE = "bad_response"  # an answer we could not read
    # An answer that says it is unusable: finish_reason "length" (max_tokens reached) or
    # "content_filter" (the model or its guard refused). Not retried: the same request gets
    # the same cut, and a refusal is the model's answer; a rerun asks again.
    CUT_OFF = "cut_off"
    REFUSED = "refused"
    SCHEMA_MISMATCH = "schema_mismatch"  # a structured answer that breaks --response-schema
    REJECTED = "rejected"  # the endpoint said 4xx, or the request could never fit a limit
    AUTH = "auth"


INVALID_CLASSES = frozenset(ErrorClass) - {
    ErrorClass.RATE_LIMITED, ErrorClass.TIMEOUT, ErrorClass.SERVER_ERROR,
    ErrorClass.CONNECTION_ERROR, ErrorClass.BAD_RESPONSE, ErrorClass.REJECTED, ErrorClass.AUTH,
    ErrorClass.CUT_OFF, ErrorClass.REFUSED, ErrorClass.SCHEMA_MISMATCH,
}
FAILED_CLASSES = frozenset(ErrorClass) - INVALID_CLASSES


class RunStatus(_Word):
    """A run's row in the runs table."""

    RUNNING = "running"  # written at the start, so a killed run stays visible
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
