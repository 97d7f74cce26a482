"""jobs/caption_images.py's own arguments, as a Databricks task passes them: empty flags for
unset settings, and a token from a secret scope. The script as a whole runs in test_cli.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jobs" / "caption_images.py"
SECRET = "dapi-not-a-real-token-0123456789"


def load_job():
    spec = importlib.util.spec_from_file_location("job_caption_images", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The script itself runs as a subprocess in tests/e2e/test_cli.py (the no-argument demo).
# Neither Spark nor a subprocess here: the job-only arguments, up to the CLI call.


@pytest.fixture
def job(monkeypatch):
    """The job module with `vision-batch run` replaced by a recorder of what it would get."""
    for name in ("DATABRICKS_TOKEN", "DATABRICKS_HOST"):
        # Set, then deleted: monkeypatch records the variable only when it exists, and the
        # job writes it into os.environ; teardown must take that out for the tests after.
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    module = load_job()
    calls: list[tuple[list[str], str | None, str | None]] = []

    def record(argv):
        calls.append((argv, os.environ.get("DATABRICKS_TOKEN"), os.environ.get("DATABRICKS_HOST")))
        return 0

    monkeypatch.setattr(module, "cli_main", record)
    module.calls = calls
    return module


def test_flags_with_empty_values_are_dropped(job) -> None:
    assert job.drop_unset(
        ["--max-rpm=", "--host", "", "--input=/v/in", "--prompt", "a b", "--table", "t"]
    ) == ["--input=/v/in", "--prompt", "a b", "--table", "t"]


def test_without_secret_flags_the_run_gets_its_arguments_and_the_environment_as_is(job) -> None:
    assert job.main(["--input=/v/in", "--secret-scope=", "--secret-key=", "--max-rpm="]) == 0
    assert job.calls == [(["run", "--input=/v/in"], None, None)]


def test_a_secret_becomes_the_sdk_token_for_the_workspace_it_came_from(job, capsys) -> None:
    def read(scope, key):
        assert (scope, key) == ("vision", "endpoint-token")
        return SECRET, "https://example.cloud.databricks.com"

    code = job.main(["--secret-scope", "vision", "--secret-key=endpoint-token", "--input=/v"],
                    read=read)
    assert code == 0
    assert job.calls == [
        (["run", "--input=/v"], SECRET, "https://example.cloud.databricks.com")
    ]
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err


def test_a_host_already_configured_wins_over_the_secrets_workspace(job, monkeypatch) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", "https://other.cloud.databricks.com")
    job.main(["--secret-scope=s", "--secret-key=k"], read=lambda s, k: (SECRET, "https://here"))
    assert job.calls[0][2] == "https://other.cloud.databricks.com"


def test_secret_errors_are_one_line_naming_scope_and_key(job, capsys) -> None:
    def unreadable(scope, key):
        raise PermissionError("no READ permission")

    assert job.main(["--secret-scope=s", "--secret-key=k"], read=unreadable) == 1
    assert job.main(["--secret-scope=s", "--secret-key=k"], read=lambda s, k: ("", None)) == 1
    assert job.main(["--secret-scope=s"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "vision-batch: error: cannot read secret s/k: PermissionError",
        "vision-batch: error: secret s/k is empty",
        "vision-batch: error: --secret-scope and --secret-key go together",
    ]
    assert job.calls == [] and "DATABRICKS_TOKEN" not in os.environ


def test_the_runs_exit_code_is_the_tasks(job, monkeypatch) -> None:
    """A run over --max-failed-share exits 3 and the script with it (`sys.exit(main())`): a
    non-zero exit fails the task, and the job's retries and failure e-mails fire."""
    monkeypatch.setattr(job, "cli_main", lambda argv: 3)
    assert job.main(["--input=/v/in"]) == 3
    assert "sys.exit(main())" in SCRIPT.read_text()
