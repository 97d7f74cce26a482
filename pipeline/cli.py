"""`vision-batch`: run, estimate, report, serve-local. Errors are one line; exit 0 when the
run completed, 1 when it could not, 2 for usage errors (pipeline/errors.py; README, "Command
line").

Spark and the run layer are imported by the commands that use them: settings are checked,
and usage errors reported, before a second is spent loading them.
"""

from __future__ import annotations

import time

STARTED = time.time()  # the command's start: every duration a run reports counts from here

import argparse  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from pipeline import config, progress  # noqa: E402
from pipeline.config import CALLERS, LOCAL_ENDPOINT, SESSIONS, ConfigError, RunConfig  # noqa: E402
from pipeline.endpoint import auth  # noqa: E402
from pipeline.endpoint.auth import CredentialSource  # noqa: E402
from pipeline.endpoint.client import preflight  # noqa: E402
from pipeline.endpoint.pacing import NAMES as LIMITS  # noqa: E402
from pipeline.endpoint.pacing import UNITS, held_back  # noqa: E402
from pipeline.errors import RunError, UsageError, first_line  # noqa: E402
from pipeline.images.limits import load_catalog  # noqa: E402
from pipeline.interrupts import Interrupted, Stop  # noqa: E402
from pipeline.local import command as serve_local  # noqa: E402
from pipeline.resources import samples_dir  # noqa: E402

if TYPE_CHECKING:
    from pipeline.runs import RunResult


def _input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", help="YAML run configuration (see conf/local.yml)")
    p.add_argument("--input", help="folder or volume path to caption (recursive)")
    p.add_argument("--table", help="captions table: a name, or a path when it contains '/'")
    p.add_argument("--endpoint", help="serving endpoint name")
    p.add_argument("--host", help="workspace URL; default from the Databricks SDK auth")
    p.add_argument("--prompt", help="instruction sent with every image")
    p.add_argument("--max-tokens", type=int, dest="max_tokens")
    p.add_argument("--mode", choices=("udf", "sql"))
    p.add_argument("--caller", choices=CALLERS,
                   help="where requests are sent from: Spark's executors, or the driver "
                        "(auto, the default: the driver, which loses no request with an "
                        "executor)")
    p.add_argument("--spark", choices=SESSIONS,
                   help="Spark session: auto (Databricks' own, SPARK_REMOTE, or local), or "
                        "databricks-connect (the Databricks profile's cluster or serverless)")
    p.add_argument("--max-concurrency", type=int, dest="max_concurrency",
                   help="requests in flight across the whole run")
    p.add_argument("--max-rpm", type=int, dest="max_rpm", help="requests per minute, whole run")
    for name in LIMITS:
        p.add_argument(f"--max-{name}", type=int, dest=f"max_{name}",
                       help=f"{UNITS[name]}, whole run (a pay-per-token limit)")
    p.add_argument("--request-timeout", type=float, dest="request_timeout",
                   help="seconds per attempt")
    p.add_argument("--max-attempts", type=int, dest="max_attempts")
    p.add_argument("--max-files-per-batch", type=int, dest="max_files_per_batch")
    p.add_argument("--lease-seconds", type=int, dest="lease_seconds",
                   help="how long another run waits for files a killed run had claimed "
                        "(default 60)")
    p.add_argument("--max-outage-seconds", type=int, dest="max_outage_seconds",
                   help="how long an endpoint that fails every request is waited out before "
                        "the run stops, its answers kept (default 1800)")
    p.add_argument("--response-schema", dest="response_schema",
                   help="JSON Schema file for structured answers")
    p.add_argument("--caption-field", dest="caption_field",
                   help="field of the structured answer stored as the caption")
    p.add_argument("--model-family", dest="model_family",
                   help="limits family from conf/models.yml (default: by endpoint name)")
    p.add_argument("--images-per-request", type=int, dest="images_per_request",
                   help="pack K independent images into each request, one answer per image")
    p.add_argument("--group-by", dest="group_by",
                   help="'folder', or a regular expression whose first group in the path is "
                        "the group key: each group's images are asked about together")
    p.add_argument("--group-prompt", dest="group_prompt",
                   help="instruction sent with each group's images")
    p.add_argument("--sample", type=int, dest="sample",
                   help="only a deterministic sample of N files (with --group-by: N groups)")
    p.add_argument("--sample-fraction", type=float, dest="sample_fraction",
                   help="only a deterministic sample of this share of the files (0-1]")
    p.add_argument("--sample-seed", type=int, dest="sample_seed",
                   help="another seed gives another sample (default 0)")


def _page_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of the commands that write a page about a table (report, compare)."""
    p.add_argument("--table", required=True,
                   help="captions table: a name, or a path when it contains '/'")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--spark", choices=SESSIONS, default="auto", help="Spark session, as for run")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vision-batch",
        description="Caption every image in a folder with a vision model, into Delta tables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="caption the files under --input")
    _input_flags(run_p)
    run_p.set_defaults(func=cmd_run)
    estimate_p = commands.add_parser(
        "estimate", help="dry run: counts, reasons and estimated tokens, no requests"
    )
    _input_flags(estimate_p)
    estimate_p.set_defaults(func=cmd_estimate)
    serve_p = commands.add_parser(
        "serve-local", help="serve the local reference model",
        description="Serve the local reference model on 127.0.0.1, speaking the Databricks "
        "serving protocol. Clients must send `Authorization: Bearer <token>` with the token "
        "in DATABRICKS_TOKEN (set it before starting; never a flag, so it stays out of shell "
        "history and process listings).")
    serve_local.add_arguments(serve_p)
    serve_p.set_defaults(func=serve_local.serve)
    report_p = _page_flags(commands.add_parser(
        "report", help="one self-contained HTML page: figures, charts, a gallery of captions"))
    report_p.add_argument("--run-id", dest="run_id",
                          help="only the rows this run wrote (default: every row)")
    report_p.add_argument("--max-thumbnails", type=int, dest="max_thumbnails",
                          help="gallery cards at most; beyond it a sample (default 1000)")
    report_p.set_defaults(func=cmd_report)
    compare_p = _page_flags(commands.add_parser(
        "compare", help="one HTML page: several endpoints' and prompts' answers side by side"))
    compare_p.add_argument("--pair", action="append", dest="pairs", metavar="ENDPOINT:PROMPT_ID",
                           help="a pair to show (repeat it; default: every pair in the table)")
    compare_p.add_argument("--max-images", type=int, dest="max_images",
                           help="images in the grid at most, the first by path (default 500)")
    compare_p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:  # before Spark starts: nothing was created
        return _fail(str(exc), exc.exit_code)
    except RunError as exc:
        return _fail(str(exc), exc.exit_code)
    except Interrupted as exc:
        return _fail(interrupted(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # a Spark or JVM failure: its first line, not the stack trace
        return _fail(f"{type(exc).__name__}: {first_line(exc)[:400]}", 1)


def _fail(message: str, code: int) -> int:
    print(f"vision-batch: error: {message}", file=sys.stderr)
    return code


def load_config(args: argparse.Namespace) -> RunConfig:
    flags = {k: getattr(args, k, None) for k in config.FIELDS}
    env_host = None if args.host else auth.environment_host()
    return config.build(flags, args.conf, env_host)


@contextmanager
def connected(cfg: RunConfig) -> Iterator[tuple[RunConfig, CredentialSource]]:
    """Credentials for the configured host, or the embedded local endpoint when there is none."""
    if cfg.host:
        if not cfg.endpoint:
            raise ConfigError("--endpoint is required when a host is configured")
        if not cfg.input:
            raise ConfigError("--input is required when a host is configured")
        credentials = auth.resolve(cfg.host)
        if "/serving-endpoints/" in cfg.chat_path:
            preflight(credentials.current(), cfg.endpoint)
        yield cfg, credentials
        return
    # Imported here: only a run with no host needs the server (and its reference model).
    from pipeline.local import server as local_endpoint

    token = secrets.token_urlsafe(24)
    family = load_catalog(cfg.models_file).family(
        cfg.endpoint or LOCAL_ENDPOINT, cfg.model_family
    )
    options = local_endpoint.EndpointOptions(token=token, family=family)
    with local_endpoint.LocalEndpoint(options).start() as server:
        cfg = replace(
            cfg,
            endpoint=cfg.endpoint or LOCAL_ENDPOINT,
            input=cfg.input or str(samples_dir()),
            extra={"local_endpoint": server.url},
        )
        print(f"No Databricks host configured: using the local reference model at {server.url}")
        yield cfg, auth.static(server.url, token)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    cfg.prompt_spec()  # a response schema that cannot be read is a usage error, now
    from pipeline.runs import run

    report = progress.reporter()
    stop = Stop()
    stop.install()  # Ctrl-C and SIGTERM stop the run in good order (pipeline/interrupts.py)
    with connected(cfg) as (cfg, credentials):
        result = run(cfg, credentials, progress=report, started=STARTED, stop=stop)
    print(summary(result))
    if report is progress.structured:  # the totals as one parseable line too
        report(progress.update("finished", result, result.written, 0))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from pipeline.estimate import estimate, render

    cfg = load_config(args)
    cfg = replace(cfg, endpoint=cfg.endpoint or LOCAL_ENDPOINT,
                  input=cfg.input or str(samples_dir()))
    print(render(estimate(cfg)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import MAX_THUMBNAILS, write_report
    from pipeline.spark import get_spark

    limit = MAX_THUMBNAILS if args.max_thumbnails is None else args.max_thumbnails
    if limit < 1:
        raise ConfigError(f"--max-thumbnails must be at least 1, not {limit}")
    written = write_report(get_spark(kind=args.spark), args.table, args.out, run_id=args.run_id,
                           max_thumbnails=limit)
    page = written.page
    shown = (f"{page.shown:,} of {page.rows:,} rows shown, sampled" if page.sampled
             else f"all {page.rows:,} rows shown")
    print(f"report written to {written.path.resolve()} ({written.bytes / 1e6:.1f} MB, {shown}, "
          f"{page.thumbnails:,} thumbnails)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.report import compare, write_compare
    from pipeline.spark import get_spark

    limit = compare.MAX_IMAGES if args.max_images is None else args.max_images
    if limit < 1:
        raise ConfigError(f"--max-images must be at least 1, not {limit}")
    for pair in args.pairs or ():
        try:
            compare.Pair.parse(pair)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    written = write_compare(get_spark(kind=args.spark), args.table, args.out, args.pairs,
                            max_images=limit)
    print(f"compare page written to {written.path.resolve()} ({written.bytes / 1e6:.1f} MB, "
          f"{len(written.pairs)} pair(s), {written.images:,} images)")
    return 0


def interrupted(exc: Interrupted) -> str:
    """The one line a stopped run ends with: what it saved, and that a rerun resumes."""
    name = exc.args[0] if exc.args else "a signal"
    r = exc.result
    if r is None:
        return f"interrupted by {name} before any work was saved"
    return (f"interrupted by {name}: run {r.run_id} saved {r.written} rows "
            f"({progress.counts(r.statuses)}) in {r.table}; a rerun resumes from there")


def cut_off_line(count: int, max_tokens: int | None) -> str:
    """The summary's line on answers cut off at max_tokens: how many, and what to raise."""
    limit = f" {max_tokens}" if max_tokens is not None else ""
    return (f"  cut off {count} answer(s) reached --max-tokens{limit}: raise it and run again "
            "to ask them again")


def summary(r: RunResult) -> str:
    lines = [
        f"run {r.run_id}: {r.status} in {r.seconds:.1f} s "
        f"(of which {r.spark_seconds:.1f} s starting Spark)",
        f"  files   {r.listed} listed, {r.skipped} already done, {progress.counts(r.statuses)}",
    ]
    if r.error_classes:
        lines.append(
            "  errors  " + ", ".join(f"{k} {v}" for k, v in sorted(r.error_classes.items()))
        )
    lines += [
        f"  tokens  {r.total_tokens:,} (prompt {r.prompt_tokens:,}, completion "
        f"{r.completion_tokens:,}) over {r.requests} requests, {r.retries} retries"
        + (f", and at most {r.lost_requests} more sent by Spark tasks lost with their "
           "executor (answers lost)" if r.lost_requests else ""),
        f"  speed   {r.images_per_s:.1f} images/s over the whole run"
        + (
            f", latency p50 {r.latency_p50_ms:.0f} ms, p95 {r.latency_p95_ms:.0f} ms"
            if r.latency_p50_ms is not None
            else ""
        ),
        f"  table   {r.table}",
    ]
    held = held_back(dict(r.waited))
    if held:
        lines.insert(-1, f"  limits  requests {held}")
    if r.cut_off:
        lines.insert(-1, cut_off_line(r.cut_off, r.max_tokens))
    for line in r.waited_out:
        lines.insert(-1, line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
