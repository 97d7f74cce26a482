"""The run configuration: precedence, validation, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, RunConfig, build


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    cfg = build({})
    assert (cfg.mode, cfg.max_attempts, cfg.request_timeout) == ("udf", 5, 120.0)
    assert cfg.table == "output/captions" and cfg.host is None


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    conf = write(tmp_path, "host: https://from-file\nmax_concurrency: 3\nprompt: from file\n")
    cfg = build({"prompt": "from flag"}, conf, env_host="https://from-env")
    assert cfg.host == "https://from-env"
    assert cfg.prompt == "from flag"
    assert cfg.max_concurrency == 3
    assert build({"host": "https://from-flag"}, conf, "https://from-env").host == (
        "https://from-flag"
    )
    assert build({}, conf, None).host == "https://from-file"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'max_concurency'"):
        build({}, write(tmp_path, "max_concurency: 3\n"))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_attempts must be int, not 'five'"):
        build({}, write(tmp_path, "max_attempts: five\n"))
    with pytest.raises(ConfigError, match="request_timeout must be float"):
        build({}, write(tmp_path, "request_timeout: [1]\n"))


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"mode": "batch"}, "mode must be"),
        ({"max_concurrency": 0}, "max_concurrency must be at least 1"),
        ({"request_timeout": 0.0}, "request_timeout must be positive"),
        ({"prompt": "  "}, "prompt must not be empty"),
        ({"endpoint": "../x"}, "endpoint must be a serving endpoint name"),
        ({"endpoint": "a/b"}, "endpoint must be a serving endpoint name"),
        ({"endpoint": "ep?x=1"}, "endpoint must be a serving endpoint name"),
        ({"max_itpm": 0}, "max_itpm must be at least 1, not 0"),
        ({"max_otpm": -5}, "max_otpm must be at least 1, not -5"),
        ({"max_qph": 0}, "max_qph must be at least 1"),
        ({"max_tokens": 500, "max_otpm": 400}, "reserves its max_tokens"),
        ({"mode": "sql", "max_qph": 100}, "max_qph paces vision-batch's own client"),
        ({"sample": 0}, "sample must be at least 1, not 0"),
        ({"sample": 5, "sample_fraction": 0.5}, "cannot be used together"),
        ({"sample_fraction": 0.0}, "sample_fraction must be above 0 and at most 1"),
        ({"sample_fraction": 1.5}, "sample_fraction must be above 0 and at most 1"),
        ({"mode": "sql", "sample": 3}, "mode sql read the whole input"),
        ({"lease_seconds": 2}, "lease_seconds must be at least 5"),
        ({"max_failed_share": 1.5}, "max_failed_share must be a share from 0 to 1"),
        ({"max_failed_share": -0.1}, "max_failed_share must be a share from 0 to 1"),
    ],
)
def test_invalid_values(flags: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(flags)


def test_endpoint_names_in_the_url_are_checked_and_model_names_in_the_body_are_not() -> None:
    assert build({"endpoint": "databricks-claude_3-7"}).endpoint == "databricks-claude_3-7"
    # Without {endpoint} in the path the name travels as `model` in the JSON body.
    body = build({"endpoint": "meta-llama/Llama-3.2-11B-Vision", "chat_path": "/v1/chat"})
    assert body.endpoint == "meta-llama/Llama-3.2-11B-Vision"


def test_a_bad_endpoint_name_stops_the_command_before_anything_starts(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--endpoint", "../x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vision-batch: error: endpoint must be") and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # no table, no folder


@pytest.mark.parametrize(("flags", "fits"), [
    (["--max-itpm", "1000"], "1 image(s) of up to 1,533 tokens"),
    (["--max-itpm", "3000", "--images-per-request", "2"], "2 image(s) of up to 1,533 tokens"),
])
def test_an_input_token_limit_below_one_request_stops_the_command_before_anything_starts(
    tmp_path: Path, capsys, monkeypatch, flags: list[str], fits: str
) -> None:
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--endpoint", "any-vlm", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vision-batch: error: max_itpm is") and fits in err, err
    assert list(tmp_path.iterdir()) == []  # no table, no folder


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        build({}, write(tmp_path, "a: [1\n"))
    # A control character is a ReaderError, which has no .problem (it once raised
    # AttributeError here).
    with pytest.raises(ConfigError, match=r"not valid YAML \(unacceptable character #x0007"):
        build({}, write(tmp_path, "a: \x07\n"))
    with pytest.raises(ConfigError, match="No such file"):
        build({}, str(tmp_path / "missing.yml"))


def test_response_schema_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "schema.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="response_schema: .* is not JSON"):
        RunConfig(response_schema=str(bad)).prompt_spec()


def test_public_view_has_no_credentials() -> None:
    public = build({"host": "https://h"}).public()
    assert not {"token", "headers", "password", "client_secret"} & set(public)
    assert public["host"] == "https://h"


@pytest.mark.parametrize("name", ["local.yml", "dev.yml", "prod.yml"])
def test_shipped_run_configs_load(name: str) -> None:
    conf = Path(__file__).resolve().parents[2] / "conf" / name
    build({}, str(conf))
