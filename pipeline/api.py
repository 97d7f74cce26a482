"""The Python entry point: `caption(spark, **settings)`, for notebooks and other programs.

    from pipeline import caption
    result = caption(spark, input="/Volumes/main/vision/photos", table="main.vision.captions",
                     endpoint="databricks-llama-4-maverick")

The settings are `run`'s: the keys of a --conf file, the fields of RunConfig. It returns the
run's RunResult, and raises a VisionBatchError on failure: UsageError (a setting is wrong;
nothing was created), RunError (the run could not go on), TooManyFailed (a RunError: the run
finished, but more rows failed than `max_failed_share` allows; `.result` holds its result).
`vision-batch run` is this function behind flags (pipeline/cli.py, `cmd_run`).

Which endpoint is called: with `endpoint` named, the one of that name on the workspace the
Databricks SDK finds (DATABRICKS_HOST, a profile, the notebook's context) or `host`; with no
workspace, the local reference model serves that name. With no `endpoint`, the local
reference model, whatever workspace is configured: the demo runs on any machine, and a
workspace's endpoint is never called unless it is named.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline import config, progress
from pipeline.config import LOCAL_ENDPOINT, ConfigError, RunConfig
from pipeline.endpoint import auth
from pipeline.endpoint.auth import CredentialSource
from pipeline.endpoint.client import preflight
from pipeline.errors import TooManyFailed
from pipeline.images.limits import load_catalog
from pipeline.resources import samples_dir

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipeline.interrupts import Stop
    from pipeline.progress import Update
    from pipeline.runs.context import RunResult

Progress = Callable[["Update | str"], None]


def caption(spark: SparkSession | None = None, /, **settings: Any) -> RunResult:
    """Caption `input` into `table` on `spark` (the caller's session; None: the session
    `vision-batch run` would make). The run's result; see the module doc for the errors."""
    return caption_with(settings_config(settings), spark)


def settings_config(settings: dict[str, Any], conf_file: str | None = None) -> RunConfig:
    """The run's configuration from settings given as keywords or flags (None: not given),
    over a --conf file, over the environment's workspace; an unknown key is a UsageError
    naming it. The environment's workspace is not looked up when a host is given."""
    given = {k: v for k, v in settings.items() if v is not None}
    unknown = sorted(set(given) - set(config.FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} (known: {', '.join(config.FIELDS)})")
    named = config.build(given, conf_file)
    if named.host and not named.endpoint:
        # Someone who names a workspace means to call it: captions of the local model in
        # their table, under a green run, would be worse than this line.
        raise ConfigError(f"host {named.host} is set but no endpoint: name the serving "
                          "endpoint to call there (--endpoint); without one, the run uses the "
                          "local reference model, and no host")
    if not named.endpoint or given.get("host"):
        return named  # the environment's workspace would not be used: not even looked up
    env_host = auth.environment_host()
    return config.build(given, conf_file, env_host) if env_host else named


def caption_with(cfg: RunConfig, spark: SparkSession | None = None, *,
                 report: Progress | None = None, started: float | None = None,
                 stop: Stop | None = None) -> RunResult:
    """`caption` for a configuration already built (the command line builds it from flags
    and --conf). `report` takes the progress lines; `started` is when the command began;
    `stop` is the command's Ctrl-C and SIGTERM switch (pipeline/interrupts.py)."""
    cfg.prompt_spec()  # a response schema that cannot be read is a usage error, now
    from pipeline.runs import run  # Spark's modules: once the settings are known to be good

    report = report or progress.reporter()
    with connected(cfg, report) as (cfg, credentials):
        result = run(cfg, credentials, spark=spark, progress=report,
                     started=time.time() if started is None else started, stop=stop)
    problem = result.too_many_failed(cfg.max_failed_share)
    if problem:
        raise TooManyFailed(problem, result)
    return result


def local_model_line(url: str | None = None) -> str:
    """What `run` and `estimate` say first when no endpoint is named."""
    at = f" at {url}" if url else ""
    return (f"No --endpoint given: using the local reference model{at} (a configured "
            "workspace is used only with --endpoint)")


@contextmanager
def connected(cfg: RunConfig, report: Progress) -> Iterator[tuple[RunConfig, CredentialSource]]:
    """Credentials for the named endpoint's workspace, or the embedded local endpoint when no
    endpoint is named or no workspace is configured (module doc)."""
    if cfg.endpoint and cfg.host:
        if not cfg.input:
            raise ConfigError("--input is required with --endpoint on a workspace: the folder "
                              "or volume to caption")
        credentials = auth.resolve(cfg.host)
        if "/serving-endpoints/" in cfg.chat_path:
            preflight(credentials.current(), cfg.endpoint)
        yield cfg, credentials
        return
    # Imported here: only a run on the local model needs the server (and its reference model).
    from pipeline.local import server as local_endpoint

    token = secrets.token_urlsafe(24)
    family = load_catalog(cfg.models_file).family(
        cfg.endpoint or LOCAL_ENDPOINT, cfg.model_family
    )
    options = local_endpoint.EndpointOptions(token=token, family=family)
    with local_endpoint.LocalEndpoint(options).start() as server:
        named = cfg.endpoint
        cfg = replace(
            cfg,
            endpoint=cfg.endpoint or LOCAL_ENDPOINT,
            input=cfg.input or str(samples_dir()),
            extra={"local_endpoint": server.url},
        )
        report(local_model_line(server.url) if not named else
               f"No Databricks workspace configured: the local reference model serves "
               f"{named} at {server.url}")
        yield cfg, auth.static(server.url, token)
