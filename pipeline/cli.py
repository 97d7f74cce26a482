"""`vision-batch`: run, estimate, report, compare, serve-local. Errors are one line; exit 0
when the run completed within --max-failed-share, 1 when it could not, 2 for usage errors, 3
when more rows failed than --max-failed-share allows (pipeline/errors.py; docs/command-line.md,
"Exit codes").

Spark and the run layer are imported by the commands that use them: settings are checked,
and usage errors reported, before a second is spent loading them.
"""

from __future__ import annotations

import time

STARTED = time.time()  # the command's start: every duration a run reports counts from here

import argparse  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from importlib.metadata import version  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from pipeline import api, config, progress  # noqa: E402
from pipeline.config import CALLERS, LOCAL_ENDPOINT, MODES, SESSIONS, ConfigError, RunConfig  # noqa: E402,E501
from pipeline.endpoint.pacing import NAMES as LIMITS  # noqa: E402
from pipeline.endpoint.pacing import UNITS, held_back  # noqa: E402
from pipeline.errors import TooManyFailed, VisionBatchError, first_line  # noqa: E402
from pipeline.interrupts import Interrupted, Stop  # noqa: E402
from pipeline.local import command as serve_local  # noqa: E402
from pipeline.resources import samples_dir  # noqa: E402

if TYPE_CHECKING:
    from pipeline.runs import RunResult


class Help(argparse.HelpFormatter):
    """--help shows each flag's default, argparse's. A flag whose default is nothing says in
    its help what not giving it means."""

    settings = False

    def _get_help_string(self, action: argparse.Action) -> str:
        return help_text(action, self.settings)


class RunHelp(Help):
    """For `run` and `estimate`, whose flags default to None (not given: the --conf file's
    value applies, or RunConfig's): RunConfig's defaults, the one place they are set."""

    settings = True


def help_text(action: argparse.Action, settings: bool = False) -> str:
    """An option's help as --help shows it (%-escaped, as argparse formats it); `settings`:
    the option's default is RunConfig's."""
    text = action.help or ""
    if "default" in text or action.required or not action.option_strings:
        return text
    default = action.default
    if settings and default is None and action.dest in config.FIELDS:
        default = config.FIELDS[action.dest].default
    if default is None or default is False or default == argparse.SUPPRESS:
        return text
    return f"{text} (default: {str(default).replace('%', '%%')})"


def _input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", help="YAML run configuration, its keys the settings of these "
                                  "flags, which win over it (see conf/local.yml; default: none)")
    p.add_argument("--input", help="folder or volume path to caption, recursively (default: "
                                   "the bundled sample photos, on the local model)")
    p.add_argument("--table", help="captions table: a name, or a path when it contains '/'")
    p.add_argument("--endpoint", help="serving endpoint name, called on the workspace of "
                                      "--host or the Databricks SDK's auth (default: none: the "
                                      "local reference model, whatever workspace is configured)")
    p.add_argument("--host", help="workspace URL of --endpoint (default: the Databricks SDK's "
                                  "auth: DATABRICKS_HOST or the profile)")
    p.add_argument("--prompt", help="instruction sent with every image")
    p.add_argument("--max-tokens", type=int, dest="max_tokens",
                   help="tokens an answer may have at most; one cut off there fails as cut_off")
    p.add_argument("--mode", choices=MODES,
                   help="udf: vision-batch's own client asks; sql: one ai_query statement "
                        "(sql/caption_files.sql)")
    p.add_argument("--caller", choices=CALLERS,
                   help="where requests are sent from: Spark's executors, or the driver "
                        "(auto, the default: the driver, which loses no request with an "
                        "executor)")
    p.add_argument("--spark", choices=SESSIONS,
                   help="Spark session: auto (Databricks' own, SPARK_REMOTE, or local), or "
                        "databricks-connect (the Databricks profile's cluster or serverless)")
    p.add_argument("--max-concurrency", type=int, dest="max_concurrency",
                   help="requests in flight across the whole run")
    p.add_argument("--max-rpm", type=int, dest="max_rpm",
                   help="requests per minute, whole run (default: no limit)")
    for name in LIMITS:
        p.add_argument(f"--max-{name}", type=int, dest=f"max_{name}",
                       help=f"{UNITS[name]}, whole run (a pay-per-token limit; default: no "
                            "limit)")
    p.add_argument("--request-timeout", type=float, dest="request_timeout",
                   help="seconds per attempt")
    p.add_argument("--max-attempts", type=int, dest="max_attempts",
                   help="attempts per request, the first included")
    p.add_argument("--max-files-per-batch", type=int, dest="max_files_per_batch",
                   help="files per batch: one MERGE each, and at most what a crash asks again")
    p.add_argument("--lease-seconds", type=int, dest="lease_seconds",
                   help="how long another run waits for files a killed run had claimed")
    p.add_argument("--max-outage-seconds", type=int, dest="max_outage_seconds",
                   help="how long an endpoint that fails every request is waited out before "
                        "the run stops, its answers kept")
    p.add_argument("--max-failed-share", type=float, dest="max_failed_share",
                   help="exit 3 when more than this share (0-1) of the rows the run sent "
                        "failed; invalid files do not count; 1: never")
    p.add_argument("--response-schema", dest="response_schema",
                   help="JSON Schema file for structured answers (default: none: plain text)")
    p.add_argument("--caption-field", dest="caption_field",
                   help="field of the structured answer stored as the caption")
    p.add_argument("--model-family", dest="model_family",
                   help="limits family from conf/models.yml (default: by endpoint name)")
    p.add_argument("--images-per-request", type=int, dest="images_per_request",
                   help="pack K independent images into each request, one answer per image")
    p.add_argument("--group-by", dest="group_by",
                   help="'folder', or a regular expression whose first group in the path is "
                        "the group key: each group's images are asked about together "
                        "(default: none)")
    p.add_argument("--group-prompt", dest="group_prompt",
                   help="instruction sent with each group's images")
    p.add_argument("--sample", type=int, dest="sample",
                   help="only a deterministic sample of N files (with --group-by: N groups; "
                        "default: every file)")
    p.add_argument("--sample-fraction", type=float, dest="sample_fraction",
                   help="only a deterministic sample of this share of the files, (0-1] "
                        "(default: every file)")
    p.add_argument("--sample-seed", type=int, dest="sample_seed",
                   help="another seed gives another sample")


def _page_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of the commands that write a page about a table (report, compare)."""
    p.add_argument("--table", required=True,
                   help="captions table: a name, or a path when it contains '/'")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--spark", choices=SESSIONS, default="auto", help="Spark session, as for run")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vision-batch", formatter_class=Help,
        description="Caption every image in a folder with a vision model, into Delta tables.",
    )
    parser.add_argument("--version", action="version",
                        version=f"vision-batch {version('vision-batch')}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="caption the files under --input",
                                formatter_class=RunHelp)
    _input_flags(run_p)
    run_p.set_defaults(func=cmd_run)
    estimate_p = commands.add_parser(
        "estimate", help="dry run: counts, reasons and estimated tokens, no requests",
        formatter_class=RunHelp,
    )
    _input_flags(estimate_p)
    estimate_p.set_defaults(func=cmd_estimate)
    serve_p = commands.add_parser(
        "serve-local", help="serve the local reference model",
        description="Serve the local reference model on 127.0.0.1, speaking the Databricks "
        "serving protocol. Clients must send `Authorization: Bearer <token>` with the token "
        "in DATABRICKS_TOKEN (set it before starting; never a flag, so it stays out of shell "
        "history and process listings).", formatter_class=Help)
    serve_local.add_arguments(serve_p)
    serve_p.set_defaults(func=serve_local.serve)
    report_p = _page_flags(commands.add_parser(
        "report", help="one self-contained HTML page: figures, charts, a gallery of captions",
        formatter_class=Help))
    report_p.add_argument("--run-id", dest="run_id",
                          help="only the rows this run wrote (default: every row)")
    report_p.add_argument("--max-thumbnails", type=int, dest="max_thumbnails",
                          help="gallery cards at most; beyond it a sample (default 1000)")
    report_p.set_defaults(func=cmd_report)
    compare_p = _page_flags(commands.add_parser(
        "compare", help="one HTML page: several endpoints' and prompts' answers side by side",
        formatter_class=Help))
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
    except (Exception, KeyboardInterrupt) as exc:
        message, code = failure(exc)
        return _fail(message, code)


def failure(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit code a command ends with when `exc` stops it (the job
    scripts end the same way)."""
    if isinstance(exc, VisionBatchError):  # a usage error came before Spark: nothing created
        return str(exc), exc.exit_code
    if isinstance(exc, Interrupted):
        return interrupted(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    # A Spark or JVM failure: its first line, not the stack trace, and where the rest is.
    return f"{type(exc).__name__}: {first_line(exc)[:400]}{_full_output()}", 1


def _full_output() -> str:
    """Where the rest of an unexpected failure is: the log of the JVM this command started
    (pipeline/spark.py), if it started one. A remote session's is on its server."""
    from pipeline.spark import jvm_log  # (loaded already: progress.py uses it)

    log = jvm_log()
    return f" (the JVM's full output: {log})" if log is not None else ""


def _fail(message: str, code: int) -> int:
    print(f"vision-batch: error: {message}", file=sys.stderr)
    return code


def load_config(args: argparse.Namespace) -> RunConfig:
    return api.settings_config({k: getattr(args, k, None) for k in config.FIELDS}, args.conf)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    report = progress.reporter()
    stop = Stop()
    stop.install()  # Ctrl-C and SIGTERM stop the run in good order (pipeline/interrupts.py)
    try:
        result = api.caption_with(cfg, report=report, started=STARTED, stop=stop)
    except TooManyFailed as exc:  # the run finished: its summary, then the line (exit 3)
        finished(exc.result, report, outcome="finished, too many rows failed,")
        raise
    finished(result, report)
    return 0


def finished(result: RunResult, report: api.Progress, outcome: str | None = None) -> None:
    print(summary(result, outcome))
    if report is progress.structured:  # the totals as one parseable line too
        report(progress.update("finished", result, result.written, 0))


def cmd_estimate(args: argparse.Namespace) -> int:
    from pipeline.estimate import estimate, render

    cfg = load_config(args)
    if not cfg.endpoint:
        print(api.local_model_line())
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


def summary(r: RunResult, outcome: str | None = None) -> str:
    """The run's totals; `outcome` replaces the run's status in the first line (a run over
    --max-failed-share finished, but did not succeed as a scheduler counts it)."""
    lines = [
        f"run {r.run_id}: {outcome or r.status} in {r.seconds:.1f} s "
        f"(of which {r.spark_seconds:.1f} s starting Spark)",
        f"  files   {r.listed} listed, {r.skipped} already done, {progress.counts(r.statuses)}",
    ]
    if r.error_classes:
        lines.append(
            "  errors  " + progress.by_class(r.error_classes)
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
    ]
    held = held_back(dict(r.waited))
    if held:
        lines.append(f"  limits  requests {held}")
    if r.cut_off:
        lines.append(cut_off_line(r.cut_off, r.max_tokens))
    lines += r.waited_out
    lines += [f"  prompt  {r.prompt_id}", f"  table   {r.table}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
