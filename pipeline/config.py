"""The run configuration: one typed dataclass, loaded from YAML and flags, validated once.

Precedence (docs/command-line.md): command-line flags, then the environment (the Databricks
SDK's unified auth resolves host and token), then the --conf file, then the defaults below.
Credentials are never part of this object: it is printed, logged and stored in the runs table.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.endpoint.groups import GROUP_BY_FOLDER
from pipeline.endpoint.payloads import PromptSpec
from pipeline.endpoint.schemas import schema_problem
from pipeline.errors import UsageError

DEFAULT_PROMPT = (
    "Describe this image in one or two sentences, as alt text for someone who cannot see it."
)
DEFAULT_GROUP_PROMPT = (
    "These images belong together (one product, place or subject). Describe what they show "
    "together in two or three sentences, and say how the images differ from each other."
)
# `group_by: folder` groups files by their parent folder; anything else is a regular
# expression whose first capture group, found in the path, is the group key.
LOCAL_ENDPOINT = "local-reference"
MODES = ("udf", "sql")
# Where requests are sent from (pipeline/runs/callers.py): `auto` is the driver on every kind
# of compute (a lost executor then costs no request: pipeline/runs/__init__.py, caller_for).
CALLERS = ("auto", "executors", "driver")
# Which Spark session (pipeline/spark.py): `auto` is the active one on Databricks, a Spark
# Connect one when SPARK_REMOTE is set, a local one otherwise.
SESSIONS = ("auto", "databricks-connect")


# What the serving API accepts as an endpoint name (it goes into the chat path's URL).
ENDPOINT_NAME = re.compile(r"[A-Za-z0-9_-]+")
MIN_LEASE_S = 5  # a claim and a renewal take a second or two


class ConfigError(UsageError):
    """A setting is missing or wrong; the message names the key."""


@dataclass
class RunConfig:
    # Input and output
    input: str | None = None
    table: str = "output/captions"
    # Endpoint
    endpoint: str | None = None
    host: str | None = None
    # Path of the chat call under the host. With {endpoint} in it the endpoint is in the URL
    # (Databricks invocations); without, it is sent as `model` (OpenAI-style servers).
    chat_path: str = "/serving-endpoints/{endpoint}/invocations"
    model_family: str | None = None
    models_file: str | None = None
    # Prompt and model parameters
    prompt: str = DEFAULT_PROMPT
    max_tokens: int = 256
    temperature: float | None = None
    response_schema: str | None = None
    caption_field: str = "caption"
    # Several images per request: independent images packed K at a time, or groups of files
    # that belong together sent with the group prompt (one or the other, not both).
    images_per_request: int = 1
    group_by: str | None = None
    group_prompt: str = DEFAULT_GROUP_PROMPT
    # Execution
    mode: str = "udf"
    caller: str = "auto"
    spark: str = "auto"
    max_concurrency: int = 8
    max_rpm: int | None = None
    # A pay-per-token endpoint's limits (its page in the workspace shows them): input and
    # output tokens per minute, queries per hour, for the whole run (pipeline/endpoint/pacing.py).
    max_itpm: int | None = None
    max_otpm: int | None = None
    max_qph: int | None = None
    request_timeout: float = 120.0
    max_attempts: int = 5
    max_files_per_batch: int = 1000
    # A deterministic sample of the input (pipeline/runs/plan.py, `sampled`): the N files, or
    # the share of them, whose hash of path and seed is smallest. With group_by, whole groups.
    sample: int | None = None
    sample_fraction: float | None = None
    sample_seed: int = 0
    # Overlapping runs share the work (pipeline/runs/claims.py): a run's claims hold while it
    # renews them; a killed run's lapse this many seconds after its last renewal.
    lease_seconds: int = 60
    # An endpoint that fails every request is waited out, probed at a slow rate, for at most
    # this long; then the run stops, failed, with every answer kept (pipeline/runs/recovery.py).
    max_outage_seconds: int = 1800
    # The run exits 3 (TooManyFailed) when more than this share of the rows it wrote failed
    # (invalid rows are neither failures nor counted). 5%: a scheduled job goes red on an
    # expired token or an outage (hundreds of failed rows), not on a handful of timeouts
    # that the next run asks again anyway. 1 never fails on failures.
    max_failed_share: float = 0.05
    # Filled by the run, not by users: where the local endpoint was started, if it was.
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RunConfig:
        for key, allowed in (("mode", MODES), ("caller", CALLERS), ("spark", SESSIONS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, "
                                  f"not {getattr(self, key)!r}")
        for key in ("max_tokens", "max_concurrency", "max_attempts", "max_files_per_batch",
                    "images_per_request"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, not {getattr(self, key)!r}")
        for key in ("max_rpm", "max_itpm", "max_otpm", "max_qph"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, not {getattr(self, key)!r}")
        paced = [key for key in ("max_itpm", "max_otpm", "max_qph") if getattr(self, key)]
        if paced and self.mode == "sql":
            raise ConfigError(f"{paced[0]} paces vision-batch's own client (mode udf); in mode "
                              "sql, ai_query sends the requests and Databricks paces them")
        if self.max_otpm is not None and self.max_tokens > self.max_otpm:
            raise ConfigError(
                f"max_otpm is {self.max_otpm:,}, but each request reserves its max_tokens "
                f"({self.max_tokens:,}) of output tokens: no request would fit a minute; "
                "lower max_tokens or raise max_otpm")
        self._check_sample()
        if self.lease_seconds < MIN_LEASE_S:
            raise ConfigError(f"lease_seconds must be at least {MIN_LEASE_S} (a lease is renewed "
                              f"every third of it), not {self.lease_seconds!r}")
        if self.max_outage_seconds < 1:
            raise ConfigError(f"max_outage_seconds must be at least 1, not "
                              f"{self.max_outage_seconds!r}")
        if not 0 <= self.max_failed_share <= 1:
            raise ConfigError(f"max_failed_share must be a share from 0 to 1 (0.05 is 5%), not "
                              f"{self.max_failed_share!r}")
        if self.request_timeout <= 0:
            raise ConfigError(f"request_timeout must be positive, not {self.request_timeout!r}")
        if not self.prompt.strip():
            raise ConfigError("prompt must not be empty")
        if not self.chat_path.startswith("/"):
            raise ConfigError(f"chat_path must start with '/': {self.chat_path!r}")
        if self.endpoint is not None and "{endpoint}" in self.chat_path \
                and not ENDPOINT_NAME.fullmatch(self.endpoint):
            # It becomes part of the URL: `../x` would call another path of the host.
            raise ConfigError(f"endpoint must be a serving endpoint name (letters, digits, '-' "
                              f"and '_'), not {self.endpoint!r}")
        if self.group_by is not None:
            self._check_group_by()
        return self

    def _check_sample(self) -> None:
        if self.sample is not None and self.sample_fraction is not None:
            raise ConfigError("sample and sample_fraction cannot be used together: give the "
                              "number of files or the share of them")
        if self.sample is not None and self.sample < 1:
            raise ConfigError(f"sample must be at least 1, not {self.sample!r}")
        if self.sample_fraction is not None and not 0 < self.sample_fraction <= 1:
            raise ConfigError(f"sample_fraction must be above 0 and at most 1, not "
                              f"{self.sample_fraction!r}")
        if self.mode == "sql" and (self.sample is not None or self.sample_fraction is not None):
            raise ConfigError("sample and sample_fraction choose files in mode udf; the SQL "
                              "templates of mode sql read the whole input")

    def _check_group_by(self) -> None:
        assert self.group_by is not None  # called only when group_by is set
        if self.images_per_request > 1:
            raise ConfigError(
                "group_by and images_per_request cannot be used together: a group is already "
                "sent as one request"
            )
        if self.mode == "sql" and self.response_schema:
            raise ConfigError(
                "group_by in mode sql takes no response_schema: sql/caption_groups.sql asks for "
                "plain text answers; use mode udf for structured group answers"
            )
        if not self.group_prompt.strip():
            raise ConfigError("group_prompt must not be empty")
        if self.group_by == GROUP_BY_FOLDER:
            return
        try:
            pattern = re.compile(self.group_by)
        except re.error as exc:
            raise ConfigError(
                f"group_by must be 'folder' or a regular expression: {exc}"
            ) from None
        if pattern.groups < 1:
            raise ConfigError(
                f"group_by {self.group_by!r} has no capture group: wrap the part of the path "
                "that names the group in parentheses"
            )

    def prompt_spec(self) -> PromptSpec:
        schema = None
        if self.response_schema:
            try:
                schema = json.loads(Path(self.response_schema).read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(
                    f"response_schema: cannot read {self.response_schema}: {exc.strerror}"
                ) from None
            except ValueError as exc:
                raise ConfigError(
                    f"response_schema: {self.response_schema} is not JSON: {exc}"
                ) from None
            # Every structured answer is validated against it (pipeline/endpoint/schemas.py):
            # a schema the validator cannot compile would fail every row, so it stops here.
            if not isinstance(schema, dict):
                raise ConfigError(f"response_schema: {self.response_schema} must hold a JSON "
                                  "Schema object")
            problem = schema_problem(schema)
            if problem is not None:
                raise ConfigError(f"response_schema: {self.response_schema} is not a valid "
                                  f"JSON Schema: {problem}")
        if self.group_by is not None:  # grouped answers are another question, another id
            return PromptSpec(self.group_prompt, self.max_tokens, self.temperature, schema,
                              self.caption_field, group_by=self.group_by)
        return PromptSpec(
            self.prompt, self.max_tokens, self.temperature, schema, self.caption_field
        )

    def public(self) -> dict[str, Any]:
        """The effective configuration, safe to print and store (it never holds secrets)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "extra"}
_TYPES = get_type_hints(RunConfig)


def _coerce(key: str, value: Any) -> Any:
    """Check one YAML value against the field's type; say which key when it is wrong."""
    hint = _TYPES[key]
    allowed = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} must not be empty")
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(k.__name__ for k in allowed if k is not type(None))
    raise ConfigError(f"{key} must be {names}, not {value!r}")


def from_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(FIELDS)})")
    return {k: _coerce(k, v) for k, v in values.items()}


def load_file(path: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--conf {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        # Only a MarkedYAMLError (bad syntax) has .problem; a ReaderError (a control character
        # in the file) says what is wrong in its first line.
        problem = (
            exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc).splitlines()[0]
        )
        raise ConfigError(f"--conf {path}: not valid YAML ({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--conf {path}: expected a mapping of settings")
    return from_mapping(raw, path)


def build(
    flags: dict[str, Any], conf_file: str | None = None, env_host: str | None = None
) -> RunConfig:
    """Defaults < conf file < environment host < flags; flags set to None do not count."""
    values: dict[str, Any] = {}
    if conf_file:
        values.update(load_file(conf_file))
    if env_host:
        values["host"] = env_host
    values.update(from_mapping({k: v for k, v in flags.items() if v is not None}, "flags"))
    return RunConfig(**values).validate()
