"""Answers the local endpoint gives that are no captions, though the request succeeded: cut off
at max_tokens, refused, or breaking the response schema the request gave, as real models now
and then answer. The server (pipeline.local.server) applies what this module picks.

Chosen deterministically, like pipeline.local.faults: a cut-off or a refusal is a function of
the seed and the body's digest only (the same request is cut the same way every time, as a
model at the same max_tokens would cut it), a schema break of the seed, the digest and how
often that body was seen (a model that breaks a schema now and then may keep it when asked
again). Pure functions, no sockets and no model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.endpoint.packing import PACKED_FIELD
from pipeline.endpoint.payloads import text_tokens
from pipeline.local.faults import check_share, pick_share, uniform

# Bad answers chosen per body, at most one of them (their shares sum to at most 1).
PER_BODY = ("cut_off", "refusal")
# The ways a structured answer breaks its schema: a value outside an `enum`, a string where
# an integer (or number) belongs, a `required` field left out. Of those the schema allows,
# one is chosen by the digest.
SCHEMA_BREAKS = ("enum", "type", "required")
# What a refusal says: nothing at all, or a short sentence (both are seen in the wild).
REFUSALS = ("", "I can't help with that request.")
# What the endpoint's stats count them as.
BAD_ANSWER_KINDS = (*PER_BODY, "schema_break")


@dataclass(frozen=True)
class BadAnswers:
    """Shares of answers that are no captions; probabilities in [0, 1]."""

    rate_cut_off: float = 0.0  # finish_reason "length", the text cut mid-sentence
    rate_refusal: float = 0.0  # finish_reason "content_filter", empty or short content
    rate_schema_break: float = 0.0  # structured requests only: the answer breaks the schema
    schema_breaks: tuple[str, ...] = SCHEMA_BREAKS  # the ways a schema may be broken
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in BAD_ANSWER_KINDS:
            check_share(f"--rate-{kind.replace('_', '-')}", self.rate(kind))
        total = sum(self.rate(kind) for kind in PER_BODY)
        if total > 1.0 + 1e-9:
            raise ValueError(f"--rate-cut-off and --rate-refusal sum to {total:g}; they must "
                             "sum to at most 1")
        unknown = sorted(set(self.schema_breaks) - set(SCHEMA_BREAKS))
        if unknown or not self.schema_breaks:
            raise ValueError(f"--schema-breaks must name some of {', '.join(SCHEMA_BREAKS)}, "
                             f"not {','.join(self.schema_breaks)!r}")

    def rate(self, kind: str) -> float:
        return float(getattr(self, f"rate_{kind}"))

    @property
    def active(self) -> bool:
        return any(self.rate(kind) > 0 for kind in BAD_ANSWER_KINDS)


def pick_bad_answer(bad: BadAnswers, key: str) -> str | None:
    """"cut_off", "refusal" or None for the body with digest `key`, whenever it is sent."""
    return pick_share(uniform(bad.seed, "answer", key),
                      ((kind, bad.rate(kind)) for kind in PER_BODY))


def pick_schema_break(bad: BadAnswers, key: str, n: int) -> bool:
    """Whether the `n`-th answer to the body with digest `key` breaks its schema."""
    return uniform(bad.seed, "schema", key, n) < bad.rate_schema_break


def cut_off(content: str, max_tokens: int | None) -> str:
    """The answer as a model stopped by max_tokens leaves it: cut mid-sentence (a structured
    answer is then no longer JSON), at two thirds of its length or max_tokens, if sooner."""
    limit = len(content) * 2 // 3
    if max_tokens is not None:
        limit = min(limit, 4 * max_tokens)
    return content[: max(1, limit)].rstrip(" .")


def cut_off_tokens(content: str, max_tokens: int | None) -> int:
    """What a cut-off answer costs: all the output tokens the request allowed."""
    return max_tokens if max_tokens is not None else text_tokens(content)


def refusal(key: str) -> str:
    return REFUSALS[int(uniform("refusal", key) * len(REFUSALS))]


def break_schema(content: str, schema: dict[str, Any], key: str, n: int,
                 ways: tuple[str, ...] = SCHEMA_BREAKS) -> tuple[str, str] | None:
    """(the answer broken one way, that way) among `ways` the schema's top-level properties
    allow, chosen by (key, n); None when none applies (or the answer is no JSON object).

    A packed answer (a list of entries with an `index`, pipeline/endpoint/packing.py) has one
    entry broken, chosen by (key, n): its `answer` against the user's schema, or, in a plain
    pack, the entry itself (its index is left alone, so the entry still names its image)."""
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    packed = _packed_entries(answer, schema)
    if packed is None:
        way = _break(answer, schema, key, n, ways)
    else:
        entries, item = packed
        entry = entries[int(uniform("entry", key, n) * len(entries))]
        inner = (item.get("properties") or {}).get("answer")
        if isinstance(inner, dict) and isinstance(entry.get("answer"), dict):
            way = _break(entry["answer"], inner, key, n, ways)
        else:
            own = {**item, "properties": {k: v for k, v in (item.get("properties") or {}).items()
                                          if k != "index"},
                   "required": [r for r in item.get("required") or () if r != "index"]}
            way = _break(entry, own, key, n, ways)
    return None if way is None else (json.dumps(answer, ensure_ascii=False), way)


def _packed_entries(answer: dict[str, Any],
                    schema: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """(the entries, the schema of one) when `answer` is a packed answer to `schema`: the
    list under PACKED_FIELD that `packed_spec` asks for."""
    listed = (schema.get("properties") or {}).get(PACKED_FIELD)
    items = listed.get("items") if isinstance(listed, dict) else None
    entries = answer.get(PACKED_FIELD)
    if (isinstance(items, dict) and "index" in (items.get("properties") or {})
            and isinstance(entries, list) and entries
            and all(isinstance(e, dict) for e in entries)):
        return entries, items
    return None


def _break(answer: dict[str, Any], schema: dict[str, Any], key: str, n: int,
           ways: tuple[str, ...]) -> str | None:
    """Break `answer` in place one of `ways` its schema allows; the way, or None."""
    properties = schema.get("properties") or {}
    enums = [name for name, sub in properties.items() if isinstance(sub, dict)
             and sub.get("enum") and name in answer]
    numbers = [name for name, sub in properties.items() if isinstance(sub, dict)
               and sub.get("type") in ("integer", "number") and name in answer]
    # Leave out a field other than the caption if there is one: a missing caption was always
    # caught, the point is that the other fields are checked too.
    required = sorted((r for r in schema.get("required") or () if r in answer),
                      key=lambda r: (r == "caption", r))
    applicable = [way for way, names in (("enum", enums), ("type", numbers),
                                         ("required", required))
                  if way in ways and names]
    if not applicable:
        return None
    way = applicable[int(uniform("way", key, n) * len(applicable))]
    if way == "enum":
        name = enums[0]
        allowed = properties[name]["enum"]
        value = f"not-{allowed[0]}"
        while value in allowed:
            value = f"not-{value}"
        answer[name] = value
    elif way == "type":
        answer[numbers[0]] = "many"
    else:
        del answer[required[0]]
    return way
