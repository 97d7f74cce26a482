"""`vision-batch serve-local`: its flags, and serving the local endpoint until Ctrl-C or
SIGTERM. Secrets come from the environment, never flags (they would show in shell history and
process listings): DATABRICKS_TOKEN for a static token, DATABRICKS_CLIENT_ID and
DATABRICKS_CLIENT_SECRET for OAuth M2M; either or both.

Kept apart from the server so the command line can offer the command cheaply: building the
CLI's parser imports this module, which loads neither the server nor the reference model;
those are imported when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from pipeline.endpoint.pacing import NAMES, UNITS
from pipeline.images.limits import load_catalog
from pipeline.local.bad_answers import SCHEMA_BREAKS, BadAnswers
from pipeline.local.faults import FAULT_KINDS, PACKED_ANSWERS, Faults
from pipeline.local.oauth import TOKEN, OAuthClient
from pipeline.local.outage import OUTAGE_KINDS, Outage

if TYPE_CHECKING:
    from pipeline.local.server import EndpointOptions


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default: the one place a serve-local default is set."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    parser.add_argument(
        "--max-concurrency", type=int, default=None,
        help="requests in flight above this get 429 REQUEST_LIMIT_EXCEEDED (default: no limit)",
    )
    parser.add_argument(
        "--max-rpm", type=int, default=None,
        help="requests per 60 s window above this get 429 with Retry-After (default: no limit)",
    )
    for name in NAMES:
        parser.add_argument(
            f"--max-{name}", type=int, default=None,
            help=f"{UNITS[name]} above this get 429 with Retry-After (a pay-per-token limit; "
                 "default: no limit)",
        )
    parser.add_argument(
        "--packed-answers", choices=PACKED_ANSWERS, default="ordered",
        help="how answers to packed requests come back (to test matching by index)",
    )
    parser.add_argument("--endpoint", default=None, help="endpoint name to serve (default: any)")
    parser.add_argument(
        "--model-family", dest="model_family", default="generic",
        help="model family from conf/models.yml whose limits apply",
    )
    for kind in FAULT_KINDS:
        parser.add_argument(
            f"--rate-{kind}", type=float, default=0.0,
            help=f"share of requests answered with fault {kind} (0-1)",
        )
    parser.add_argument("--hang-seconds", type=float, default=_default(Faults, "hang_s"),
                        help="how long a hang lasts")
    parser.add_argument(
        "--rate-cut-off", type=float, default=0.0,
        help="share of answers cut off mid-sentence with finish_reason length (0-1)",
    )
    parser.add_argument(
        "--rate-refusal", type=float, default=0.0,
        help="share of answers refused with finish_reason content_filter (0-1)",
    )
    parser.add_argument(
        "--rate-schema-break", type=float, default=0.0,
        help="share of structured answers that break the request's schema (0-1); asked "
        "again, the same request may get a good answer",
    )
    parser.add_argument(
        "--schema-breaks", default=",".join(SCHEMA_BREAKS),
        help="how a structured answer breaks its schema, chosen among these (default: "
        f"{','.join(SCHEMA_BREAKS)})",
    )
    parser.add_argument("--retry-after", default=None,
                        help="Retry-After value on every 429 (default: none sent)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the fault sequence and of the bad answers")
    parser.add_argument(
        "--token-lifetime-seconds", type=int, default=None,
        help="lifetime of the OAuth access tokens (default: "
        f"{_default(OAuthClient, 'token_lifetime_s')}); OAuth is served when "
        "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET are set",
    )
    parser.add_argument(
        "--outage-after", type=int, default=None,
        help="start an outage when this many chat requests have arrived (that one refused; "
        "default: no outage)",
    )
    parser.add_argument("--outage-seconds", type=float, default=None,
                        help="how long the outage lasts (no default: --outage-after needs it)")
    parser.add_argument(
        "--outage-kind", choices=OUTAGE_KINDS, default=None,
        help="503: TEMPORARILY_UNAVAILABLE (default); drop: the connection closes, no answer",
    )


def options_from_args(
    args: argparse.Namespace, token: str | None, client: tuple[str, str] | None = None
) -> EndpointOptions:
    """EndpointOptions from parsed flags, the static `token` and the OAuth `client` (id,
    secret); ValueError (naming the flag) for a bad value."""
    # Imported here, not at the top, for start-up cost: the server loads the reference model.
    from pipeline.local.server import EndpointOptions

    faults = Faults(
        **{f"rate_{kind}": getattr(args, f"rate_{kind}") for kind in FAULT_KINDS},
        hang_s=args.hang_seconds,
        retry_after=args.retry_after,
        seed=args.seed,
    )
    return EndpointOptions(
        token=token,
        family=load_catalog().family("", explicit=args.model_family),
        endpoint_name=args.endpoint,
        latency_ms=args.latency_ms,
        max_concurrency=args.max_concurrency,
        max_rpm=args.max_rpm,
        max_itpm=args.max_itpm,
        max_otpm=args.max_otpm,
        max_qph=args.max_qph,
        packed_answers=args.packed_answers,
        faults=faults,
        bad_answers=BadAnswers(
            rate_cut_off=args.rate_cut_off,
            rate_refusal=args.rate_refusal,
            rate_schema_break=args.rate_schema_break,
            schema_breaks=tuple(w.strip() for w in args.schema_breaks.split(",") if w.strip()),
            seed=args.seed,
        ),
        oauth=_oauth(args, client),
        outage=_outage(args),
    )


def _oauth(args: argparse.Namespace, client: tuple[str, str] | None) -> OAuthClient | None:
    lifetime = args.token_lifetime_seconds
    if client is None:
        if lifetime is not None:  # a flag that would silently do nothing is an error
            raise ValueError("--token-lifetime-seconds needs DATABRICKS_CLIENT_ID and "
                             "DATABRICKS_CLIENT_SECRET (OAuth) in the environment")
        return None
    if lifetime is None:
        return OAuthClient(*client)
    return OAuthClient(*client, token_lifetime_s=lifetime)


def _outage(args: argparse.Namespace) -> Outage | None:
    if args.outage_after is None:
        if args.outage_seconds is not None or args.outage_kind is not None:
            raise ValueError("--outage-seconds and --outage-kind need --outage-after")
        return None
    if args.outage_seconds is None:
        raise ValueError("--outage-after needs --outage-seconds")
    return Outage(args.outage_after, args.outage_seconds, args.outage_kind or "503")


def serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM, with the secrets the environment holds (module doc)."""
    token = os.environ.get("DATABRICKS_TOKEN") or None
    client_id = os.environ.get("DATABRICKS_CLIENT_ID") or None
    client_secret = os.environ.get("DATABRICKS_CLIENT_SECRET") or None
    if (client_id is None) != (client_secret is None):
        print("Set both DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET for OAuth, or "
              "neither.", file=sys.stderr)
        return 2
    client = (client_id, client_secret) if client_id and client_secret else None
    if token is None and client is None:
        print("Set DATABRICKS_TOKEN to the token clients must send, or DATABRICKS_CLIENT_ID "
              "and DATABRICKS_CLIENT_SECRET to serve OAuth M2M.", file=sys.stderr)
        return 2
    # Imported here, not at the top, for start-up cost: building the CLI's parser must not load
    # the server and its reference model.
    from pipeline.local.server import LocalEndpoint

    try:
        options = options_from_args(args, token, client)
    except ValueError as exc:  # it names the flag, never a secret's value
        print(f"serve-local: {exc}", file=sys.stderr)
        return 2
    try:
        endpoint = LocalEndpoint(options, port=args.port)
    except OSError as exc:
        print(f"Cannot listen on 127.0.0.1:{args.port}: {exc.strerror}.", file=sys.stderr)
        return 1
    stopping = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    # Signal handlers can only be installed from the main thread (not so under a test runner).
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set()) if on_main else None
    try:
        with endpoint:
            served = options.endpoint_name or "any endpoint name"
            print(
                f"Serving the local reference model at {endpoint.url} ({served}, family "
                f"{endpoint.family.name}); Ctrl-C stops it.",
                flush=True,
            )
            if options.oauth is not None:
                print(f"OAuth M2M: tokens from {endpoint.url}{TOKEN} last "
                      f"{options.oauth.token_lifetime_s} s.", flush=True)
            while not stopping.wait(0.5):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0
