"""The prompt id: one hash of a question, computed alike in Python and in the SQL templates.

A row's prompt id says which question it answers: the prompt and every parameter that shapes
the answer. The UDF path computes it here; sql/caption_files.sql and sql/caption_groups.sql
compute it from their own parameters with `sha2` (their `question` CTE), so the CLI, `--mode
sql`, the bundle's SQL job and the SQL notebook file the same question under the same id and
each skips what another has done. Nobody names an id by hand.

The hashed text is built so that SQL can build it byte for byte: a header line naming the
formula, then one line per value in a fixed order, each as its length in characters, ':' and
the value (so a value may hold any character, newlines included), or '-' when there is none;
characters are Unicode code points, as Python's len and Spark's char_length count them.
The id is the first 16 hex digits of the text's SHA-256 (UTF-8). The values:

  prompt           as given
  max_tokens       the integer in decimal
  temperature      rounded half up to 6 decimals, always 6 ('0.200000'); none: the default
  response_format  the JSON response format in Spark's canonical form, to_json(parse_json(..))
                   (object keys sorted, no spaces, see `spark_json`); none: plain text answers
  caption_field    only with a response format; none otherwise
  group_pattern    for groups, the regular expression whose first capture group is the group
                   key (`group_by: folder` is FOLDER_PATTERN, the pattern SQL runs); none
                   for single files

tests/spark/test_prompt_ids.py evaluates the templates' expression on tricky values and keeps
it equal to `prompt_id`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# Named in the hashed text: a new formula gets a new header, so its ids can never meet an
# older formula's. (Version 1 was a hash of Python's json.dumps of the same values, which SQL
# cannot reproduce.)
HEADER = "vision-batch prompt id 2"
# `--group-by folder`: each file's parent folder is its group; any other value is a regex.
GROUP_BY_FOLDER = "folder"
# `group_by: folder` as the regular expression SQL runs: capture group 1 is everything before
# the last '/', the parent folder (pipeline/endpoint/groups.py's rule for "folder").
FOLDER_PATTERN = "^(.*)/[^/]*$"
# Spark's DECIMAL(20, 6), which the templates cast the temperature to: 14 digits before the
# point. A temperature that does not fit is NULL in SQL, so none here too.
_TEMPERATURE_PLACES = Decimal("0.000001")
_TEMPERATURE_LIMIT = Decimal(10) ** 14
# A JSON number with more digits than a DECIMAL(38) holds is a DOUBLE in a Spark VARIANT.
_DECIMAL_DIGITS = 38


def prompt_id(prompt: str, max_tokens: int, temperature: float | None,
              response_format: dict[str, Any] | None, caption_field: str,
              group_rule: str | None) -> str:
    """The id of one question: what the templates' `question` CTE computes from the same
    values (`response_format` as the request body's, `group_rule` as `--group-by` takes it)."""
    values = (
        prompt,
        str(max_tokens),
        temperature_text(temperature),
        None if response_format is None else spark_json(response_format),
        caption_field if response_format is not None else None,
        None if group_rule is None else group_pattern(group_rule),
    )
    return hashlib.sha256(hashed_text(values).encode("utf-8")).hexdigest()[:16]


def hashed_text(values: Sequence[str | None]) -> str:
    """The header, then each value as `<length>:<value>`, or '-' for none, one a line."""
    return "\n".join([HEADER, *("-" if v is None else f"{len(v)}:{v}" for v in values)])


def group_pattern(rule: str) -> str:
    """The regular expression a group rule runs as in SQL (its capture group 1 is the key)."""
    return FOLDER_PATTERN if rule == GROUP_BY_FOLDER else rule


def temperature_text(temperature: float | None) -> str | None:
    """`CAST(try_cast(t AS DECIMAL(20, 6)) AS STRING)`: 0.2 and '0.20' both give '0.200000',
    so a widget's text and a config's float agree."""
    if temperature is None or not math.isfinite(temperature):
        return None
    # Spark turns a DOUBLE into a decimal through its shortest text, as repr() does.
    rounded = Decimal(repr(temperature)).quantize(_TEMPERATURE_PLACES, rounding=ROUND_HALF_UP)
    if abs(rounded) >= _TEMPERATURE_LIMIT:
        return None
    return str(abs(rounded) if rounded == 0 else rounded)  # a decimal has no -0


def spark_json(value: Any) -> str:
    """JSON as Spark's `to_json(parse_json(text))` writes the value `text` holds: object keys
    sorted as Java sorts strings (by UTF-16 code units), no spaces, strings escaped as
    Jackson does, and numbers as a VARIANT keeps them: an integer as it is, a number with a
    point as a decimal without trailing zeros, one with an exponent as Java prints a double.

    `value` is Python's reading of JSON text (`json.loads`); its floats reach Spark as
    `json.dumps` writes them, so `repr` decides decimal or double as Spark's parser would.
    Two limits, both about numbers, which JSON schemas seldom hold: a SQL job's own text is
    read as written, so a number whose form differs from json.dumps' (`1e3` for 1000.0,
    `0.00001` for 1e-05) hashes otherwise there; and Java 17 prints some doubles of 1e16 and
    above with a 17th digit Python's shortest form leaves out.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        digits = str(abs(value))
        return str(value) if len(digits) <= _DECIMAL_DIGITS else _java_double(float(value))
    if isinstance(value, float):
        text = repr(value)
        if "e" in text or not math.isfinite(value):
            return _java_double(value)
        number = Decimal(text)
        return "0" if number == 0 else format(number.normalize(), "f")
    if isinstance(value, str):
        return _jackson_string(value)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(f"{_jackson_string(k)}:{spark_json(value[k])}" for k in keys) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(spark_json(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t"}


def _jackson_string(text: str) -> str:
    """A JSON string as Spark writes it: the short escapes, other control characters as
    \\u00XX in upper case, everything else (non-ASCII, '/', DEL) as it is."""
    out = (_SHORT_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if c < " " else c) for c in text)
    return '"' + "".join(out) + '"'


def _java_double(value: float) -> str:
    """Java's Double.toString for the numbers a VARIANT holds as doubles: Python's shortest
    digits, written `1.0E-7`, `1.5E300` (json.dumps writes an exponent only below 1e-4 and
    from 1e16, where Java does too)."""
    if not math.isfinite(value):
        return json.dumps(value)
    mantissa, _, exponent = repr(value).partition("e")
    if not exponent:
        return mantissa
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}E{int(exponent)}"
