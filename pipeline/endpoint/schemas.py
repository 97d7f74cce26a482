"""The run's `--response-schema`, checked with the `jsonschema` library: the schema itself
before anything starts (`schema_problem`), and every structured answer against it
(`answer_problem`). Pure functions; the compiled validators are cached by the schema's text.

A schema names its draft with `$schema`; one that does not is read as Draft 2020-12, the
draft the OpenAI-style `response_format` documentation points to.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

# jsonschema is imported where it is used: every command (and every Spark worker) imports
# this module through the configuration and the payloads, most never check a schema.
if TYPE_CHECKING:
    from jsonschema.protocols import Validator

# A message is one line in a table cell: what the validator said, shortened past this.
MAX_MESSAGE = 300


def schema_problem(schema: Any) -> str | None:
    """Why the validator cannot use `schema` (one line), or None when it can."""
    from jsonschema import exceptions

    try:
        _validator_class(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        where = _path(exc.json_path)
        return _shorten(f"{exc.message} (at {where} in the schema)")
    return None


def answer_problem(answer: Any, schema: dict[str, Any]) -> str | None:
    """What is wrong with `answer` against `schema`, as the validator's most relevant error
    says it (its JSON path and its message), or None when the answer fits."""
    from jsonschema import exceptions

    error = exceptions.best_match(_validator(_canonical(schema)).iter_errors(answer))
    if error is None:
        return None
    return _shorten(f"{_path(error.json_path)}: {error.message}")


def least_answer(schema: Any) -> Any:
    """The shortest value that fits `schema` as far as its required parts go (empty strings,
    zeros, the shortest enum value, arrays at their minItems): what even the tersest
    structured answer has to spell out, so a max_tokens below it cuts every answer off."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return min(schema["enum"], key=lambda value: len(json.dumps(value)))
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):  # e.g. ["string", "null"]: the null is shorter still
        return None if "null" in kind else least_answer({**schema, "type": kind[0]})
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: least_answer(properties.get(name)) for name in schema.get("required") or ()}
    if kind == "array":
        return [least_answer(schema.get("items")) for _ in range(schema.get("minItems") or 0)]
    if kind == "string":
        return "x" * int(schema.get("minLength") or 0)
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return None


def _validator_class(schema: Any) -> type[Validator]:
    """The validator of the draft the schema names, Draft 2020-12 when it names none."""
    from jsonschema import validators

    default = validators.Draft202012Validator
    if not isinstance(schema, dict):
        return default
    return validators.validator_for(schema, default=default)


@functools.lru_cache(maxsize=16)
def _validator(text: str) -> Validator:
    """One compiled validator per schema: every answer of a run is checked against it."""
    schema = json.loads(text)
    return _validator_class(schema)(schema)


def _canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _path(json_path: str) -> str:
    return json_path or "$"


def _shorten(message: str) -> str:
    line = " ".join(message.split())  # one line, whatever the values held
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3].rstrip() + "..."
