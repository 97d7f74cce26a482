"""Databricks job task (spark_python_task) and local entry point: caption a folder or volume.

Job parameters are the `vision-batch run` flags, parsed by the CLI itself, plus two that only
a job needs:

    --secret-scope S --secret-key K   read a token from a Databricks secret scope and hand it
                                      to the SDK's unified auth as DATABRICKS_TOKEN

A flag with an empty value (`--max-rpm=` or `--max-rpm ""`) counts as not given: a bundle
passes every parameter on every run, so an unset optional setting arrives empty.

The script exits with `vision-batch run`'s code (docs/command-line.md, "Exit codes"): 1, 2,
or 3 when more rows failed than --max-failed-share allows, fail the task, so the job's retries
and failure e-mails fire.

Locally, with no --endpoint, this is the demo against the embedded local endpoint:

    python jobs/caption_images.py --input ./photos --table output/captions
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from pipeline.cli import main as cli_main

# (scope, key) -> (secret value, URL of the workspace it was read from)
SecretReader = Callable[[str, str], tuple[str, str | None]]


class SecretError(RuntimeError):
    """The secret cannot be used; the message names scope and key, never the value."""


def job_flags() -> argparse.ArgumentParser:
    """The flags only a job takes; every other argument goes to `vision-batch run` as is."""
    parser = argparse.ArgumentParser(
        prog="caption_images.py",
        description="Job-only flags; all other arguments are those of `vision-batch run`.",
        add_help=False,
        allow_abbrev=False,  # `--secret` must not pass for one of these
    )
    parser.add_argument("--secret-scope", dest="secret_scope",
                        help="Databricks secret scope holding a token for the endpoint")
    parser.add_argument("--secret-key", dest="secret_key", help="key of that token in the scope")
    return parser


def drop_unset(argv: Sequence[str]) -> list[str]:
    """The arguments less every flag whose value is empty: `--flag=` or `--flag ""`."""
    kept: list[str] = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg.startswith("--") and arg.endswith("=") and arg.count("=") == 1:
            continue
        if arg.startswith("--") and "=" not in arg and rest and rest[0] == "":
            rest.pop(0)
            continue
        kept.append(arg)
    return kept


def read_secret(scope: str, key: str) -> tuple[str, str | None]:
    """A secret through the SDK: the runtime's dbutils on Databricks, the REST API elsewhere."""
    from databricks.sdk import WorkspaceClient

    client = WorkspaceClient()
    return client.dbutils.secrets.get(scope=scope, key=key), client.config.host


def use_secret_token(scope: str, key: str, read: SecretReader = read_secret) -> None:
    """Put the token where the SDK's unified auth looks first; it is never printed.

    The SDK takes a token only together with a host, so the workspace the secret came from
    becomes the host unless one is set: a service principal's token for this very workspace
    then needs no --host. A token for another workspace goes with --host, which wins.
    """
    try:
        token, host = read(scope, key)
    except Exception as exc:  # the SDK raises many kinds; say which, and why if it is an API
        # error (no such secret, no READ permission): no message can hold a value not read
        why = str(exc).splitlines()[0][:200] if _is_api_error(exc) else ""
        detail = f"{type(exc).__name__}: {why}" if why else type(exc).__name__
        raise SecretError(f"cannot read secret {scope}/{key}: {detail}") from None
    if not token:
        raise SecretError(f"secret {scope}/{key} is empty")
    os.environ["DATABRICKS_TOKEN"] = token
    if host:
        os.environ.setdefault("DATABRICKS_HOST", host)


def main(argv: Sequence[str] | None = None, read: SecretReader = read_secret) -> int:
    args = drop_unset(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(job_flags().format_help())
    flags, run_args = job_flags().parse_known_args(args)
    if bool(flags.secret_scope) != bool(flags.secret_key):
        return _fail("--secret-scope and --secret-key go together", 2)
    if flags.secret_scope:
        try:
            use_secret_token(flags.secret_scope, flags.secret_key, read)
        except SecretError as exc:
            return _fail(str(exc), 1)
    return cli_main(["run", *run_args])


def _is_api_error(exc: Exception) -> bool:
    from databricks.sdk.errors import DatabricksError

    return isinstance(exc, DatabricksError)


def _fail(message: str, code: int) -> int:
    print(f"vision-batch: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
