"""Bad input at the command line: one clear line on stderr and exit 1 or 2, never a trace."""

from __future__ import annotations

import pytest

from pipeline import cli
from tests import files


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["run", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(err: str, *needles: str) -> None:
    assert err.startswith("vision-batch: error: ") and "\n" not in err, err
    assert "Traceback" not in err and "at org.apache" not in err
    for needle in needles:
        assert needle in err, err


def test_missing_input_folder(spark, capsys, tmp_path) -> None:
    code, err = run_cli(capsys, "--input", str(tmp_path / "nope"),
                        "--table", str(tmp_path / "t"))
    assert code == 1
    assert_one_line(err, "does not exist")


def test_empty_input_folder(spark, capsys, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "--input", str(tmp_path / "empty"),
                        "--table", str(tmp_path / "t"))
    assert code == 1
    assert_one_line(err, "holds no files")


def test_table_path_that_is_not_delta(spark, capsys, tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(files.jpeg())
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "part-0000.parquet").write_bytes(b"PAR1 not really")
    code, err = run_cli(capsys, "--input", str(tmp_path / "in"), "--table", str(tmp_path / "t"))
    assert code == 1
    assert_one_line(err, "not a Delta table")


def test_unreachable_host(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-not-a-real-token")
    code, err = run_cli(capsys, "--host", "http://127.0.0.1:9", "--endpoint", "ep",
                        "--input", str(tmp_path))
    assert code == 1
    assert_one_line(err, "cannot reach http://127.0.0.1:9")
    assert "dapi-not-a-real-token" not in err


def test_wrong_token(serve, capsys, tmp_path, monkeypatch) -> None:
    endpoint, _ = serve()
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-wrong-token")
    code, err = run_cli(capsys, "--host", endpoint.url, "--endpoint", "ep",
                        "--input", str(tmp_path))
    assert code == 1
    assert_one_line(err, "refused the credentials")
    assert "dapi-wrong-token" not in err


def test_a_host_without_any_credentials(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg either
    code, err = run_cli(capsys, "--host", "http://127.0.0.1:9", "--endpoint", "ep",
                        "--input", str(tmp_path))
    assert code == 1
    assert_one_line(err, "http://127.0.0.1:9")


def test_usage_errors_exit_2(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--max-attempts", "many"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    conf = tmp_path / "bad.yml"
    conf.write_text("max_concurrency: 0\n")
    code, err = run_cli(capsys, "--conf", str(conf))
    assert code == 2
    assert_one_line(err, "max_concurrency must be at least 1")
    # A workspace named without an endpoint: not silently the local model in its place.
    code, err = run_cli(capsys, "--host", "http://127.0.0.1:9", "--input", str(tmp_path))
    assert code == 2
    assert_one_line(err, "host http://127.0.0.1:9 is set but no endpoint")


def test_a_run_against_a_host_uses_sdk_auth_from_the_environment(
    spark, serve, capsys, tmp_path, monkeypatch
) -> None:
    endpoint, creds = serve(endpoint_name="my-vlm")
    token = creds.headers.reveal().split("Bearer ", 1)[1]
    monkeypatch.setenv("DATABRICKS_HOST", endpoint.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", token)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(files.jpeg())
    code = cli.main(["run", "--endpoint", "my-vlm", "--input", str(tmp_path / "in"),
                     "--table", str(tmp_path / "t")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 ok" in out.out and endpoint.stats()["answered_ok"] == 1
    assert token not in out.out + out.err
