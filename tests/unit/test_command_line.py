"""The basics of the command line: --version, help and a default shown for every flag, which
workspace a run uses (none unless an endpoint is named), and where an unexpected failure's
full output is."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import api, cli
from pipeline.config import ConfigError
from pipeline.errors import UsageError
from tests.conftest import REPO


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"vision-batch": parser, **sub.choices}


def shown(command: str, flag: str) -> str:
    """The help `command --help` shows for `flag`, before it is wrapped."""
    parser = commands()[command]
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return parser._get_formatter()._get_help_string(action)


def test_every_flag_of_every_command_has_help_and_shows_its_default() -> None:
    found = 0
    for name, parser in commands().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            found += 1
            flag = f"{name} {action.option_strings[-1]}"
            assert action.help, f"{flag} has no help text"
            shown = formatter._get_help_string(action)
            assert action.required or "default" in shown, f"{flag} shows no default: {shown}"
    assert found > 60


def test_run_shows_the_defaults_runconfig_holds() -> None:
    assert shown("run", "--max-failed-share").endswith("(default: 0.05)")
    assert shown("estimate", "--table").endswith("(default: output/captions)")
    assert shown("run", "--max-outage-seconds").endswith("(default: 1800)")
    assert shown("serve-local", "--hang-seconds").endswith("(default: 600.0)")  # Faults'
    # serve-local's --max-concurrency is not run's: no limit unless given
    assert shown("serve-local", "--max-concurrency").endswith("(default: no limit)")


def test_page_limits_in_the_help_are_the_ones_the_pages_use() -> None:
    from pipeline.report import MAX_THUMBNAILS, compare

    assert f"(default {MAX_THUMBNAILS})" in shown("report", "--max-thumbnails")
    assert f"(default {compare.MAX_IMAGES})" in shown("compare", "--max-images")


def test_renamed_flags_are_spelled_as_run_spells_them() -> None:
    serve = commands()["serve-local"]
    args = serve.parse_args(["--model-family", "gemma3", "--hang-seconds", "2"])
    assert (args.model_family, args.hang_seconds) == ("gemma3", 2.0)
    flags = {f for a in serve._actions for f in a.option_strings}
    assert not {"--family", "--hang-s"} & flags


def test_version_is_the_package_version() -> None:
    # (tomllib is Python 3.11's; the package supports 3.10)
    found = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert found
    declared = found.group(1)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == f"vision-batch {declared}\n"


def home_with_profile(home: Path, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """A home whose ~/.databrickscfg has a [DEFAULT] profile, as most Databricks users have."""
    (home / ".databrickscfg").write_text(f"[DEFAULT]\nhost = {host}\ntoken = dapi-x\n")
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A [DEFAULT] profile of a workspace nothing answers for (the SDK would try it for 15 s)."""
    host = "http://127.0.0.1:9"
    home_with_profile(tmp_path, monkeypatch, host)
    return host


def test_with_no_endpoint_no_workspace_is_used_whatever_is_configured(
    profile: str, serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not even looked up: the SDK would spend its retries on the unreachable host.
    assert api.settings_config({}).host is None
    monkeypatch.setenv("DATABRICKS_HOST", "http://127.0.0.1:7")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-y")
    assert api.settings_config({}).host is None
    # With an endpoint, the workspace the SDK finds: the variable, or else the profile (one
    # that answers, as the SDK asks it for its configuration).
    workspace, _ = serve()
    monkeypatch.setenv("DATABRICKS_HOST", workspace.url)
    assert api.settings_config({"endpoint": "my-vlm"}).host == workspace.url
    monkeypatch.delenv("DATABRICKS_HOST")
    monkeypatch.delenv("DATABRICKS_TOKEN")
    home_with_profile(tmp_path, monkeypatch, workspace.url)
    assert api.settings_config({"endpoint": "my-vlm"}).host == workspace.url
    assert api.settings_config({"endpoint": "my-vlm", "host": "https://flag"}).host == (
        "https://flag")


def test_a_host_named_without_an_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="host https://h is set but no endpoint"):
        api.settings_config({"host": "https://h"})
    conf = tmp_path / "run.yml"
    conf.write_text("host: https://from-file\n")
    with pytest.raises(ConfigError, match="host https://from-file is set but no endpoint"):
        api.settings_config({}, str(conf))


def test_unknown_settings_of_the_entry_point_are_named() -> None:
    from pipeline import caption

    with pytest.raises(UsageError, match="unknown setting 'max_token'"):
        caption(None, max_token=5)


def test_the_first_line_says_the_local_model_is_used_and_why(
    profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    # estimate's settings are checked before Spark starts: a bad one ends it after the line
    assert cli.main(["estimate", "--group-by", "folder"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == api.local_model_line() == (
        "No --endpoint given: using the local reference model (a configured workspace is "
        "used only with --endpoint)")


def test_an_unexpected_failure_names_the_jvm_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import spark

    log = tmp_path / "vision-batch-spark-1.log"
    monkeypatch.setattr(spark, "_started_log", log)

    def fails(_args: object) -> int:
        raise RuntimeError("An error occurred while calling o62.sql.\n: java.lang.OutOfMemory"
                           "Error: Java heap space\n\tat org.apache.spark.Something")

    monkeypatch.setattr(cli, "cmd_estimate", fails)
    assert cli.main(["estimate"]) == 1
    assert capsys.readouterr().err == (
        "vision-batch: error: RuntimeError: java.lang.OutOfMemoryError: Java heap space "
        f"(the JVM's full output: {log})\n")
    monkeypatch.setattr(spark, "_started_log", None)  # a notebook's or a remote session
    assert cli.main(["estimate"]) == 1
    assert "full output" not in capsys.readouterr().err
