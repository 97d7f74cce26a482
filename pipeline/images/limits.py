"""Model-family limits and image-token formulas, read from conf/models.yml (the one place)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import RunError
from pipeline.resources import conf_dir

TOKEN_KINDS = ("pixels", "tiles", "grid", "fixed")
PRICE_KEYS = ("input_per_million", "output_per_million", "currency", "source")


class LimitsError(RunError, ValueError):
    """conf/models.yml is missing a key or holds a wrong value; the message names the key."""


@dataclass(frozen=True)
class TokenFormula:
    kind: str
    params: dict[str, float] = field(default_factory=dict)

    def estimate(self, width: int, height: int) -> int:
        """Image tokens the family's formula gives for an image sent at width x height."""
        p = self.params
        if width <= 0 or height <= 0:
            return 0
        if self.kind == "fixed":
            return int(p["per_image"])
        if self.kind == "pixels":
            return int(min(math.ceil(width * height / p["per_pixels"]), p.get("cap", math.inf)))
        if self.kind == "grid":
            tiles = math.ceil(width / p["tile"]) * math.ceil(height / p["tile"])
            return int(tiles * p["per_tile"] + p.get("extra", 0))
        # tiles: fit into fit_side x fit_side, then shortest side to short_side, 512 px tiles.
        scale = min(1.0, p["fit_side"] / max(width, height))
        w, h = width * scale, height * scale
        scale = min(1.0, p["short_side"] / min(w, h))
        w, h = w * scale, h * scale
        tiles = math.ceil(w / p["tile"]) * math.ceil(h / p["tile"])
        return int(p["base"] + p["per_tile"] * tiles)


@dataclass(frozen=True)
class Price:
    """What a family's tokens cost, as the user configured it (never a built-in figure)."""

    input_per_million: float
    output_per_million: float
    currency: str
    source: str

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:  # or mean tokens
        return (prompt_tokens * self.input_per_million
                + completion_tokens * self.output_per_million) / 1_000_000


@dataclass(frozen=True)
class ModelFamily:
    name: str
    match: str | None
    formats: tuple[str, ...]
    max_images_per_request: int
    max_image_bytes: int
    max_request_bytes: int
    max_side: int
    target_side: int
    target_pixels: int | None
    tokens: TokenFormula
    sources: tuple[str, ...]
    price: Price | None = None  # None: the report says "no price configured"

    def image_tokens(self, width: int, height: int) -> int:
        return self.tokens.estimate(width, height)


@dataclass(frozen=True)
class InputBounds:
    """What a worker agrees to read and decode, whatever the model."""

    max_file_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class Catalog:
    families: dict[str, ModelFamily]
    input: InputBounds

    def family(self, endpoint: str, explicit: str | None = None) -> ModelFamily:
        """The family for an endpoint: the explicit name if given, else the first match."""
        if explicit:
            if explicit not in self.families:
                known = ", ".join(sorted(self.families))
                raise LimitsError(f"model_family {explicit!r} is not in models.yml ({known})")
            return self.families[explicit]
        for fam in self.families.values():
            if fam.match and re.search(fam.match, endpoint or "", re.IGNORECASE):
                return fam
        return self.families["generic"]


def _require(mapping: dict[str, Any], key: str, where: str, kind: type | tuple = int) -> Any:
    if key not in mapping:
        raise LimitsError(f"{where}.{key} is missing")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LimitsError(f"{where}.{key} must be {getattr(kind, '__name__', kind)}: {value!r}")
    if isinstance(value, int) and value <= 0:
        raise LimitsError(f"{where}.{key} must be positive: {value!r}")
    return value


def _family(name: str, raw: dict[str, Any]) -> ModelFamily:
    where = f"families.{name}"
    tokens = _require(raw, "tokens", where, dict)
    kind = tokens.get("kind")
    if kind not in TOKEN_KINDS:
        raise LimitsError(f"{where}.tokens.kind must be one of {TOKEN_KINDS}: {kind!r}")
    match = raw.get("match")
    if match is not None:
        try:
            re.compile(match)
        except re.error as exc:
            raise LimitsError(f"{where}.match is not a regular expression: {exc}") from None
    formats = _require(raw, "formats", where, list)
    target_pixels = raw.get("target_pixels")
    if target_pixels is not None:
        _require(raw, "target_pixels", where)
    return ModelFamily(
        name=name,
        match=match,
        formats=tuple(str(f).upper() for f in formats),
        max_images_per_request=_require(raw, "max_images_per_request", where),
        max_image_bytes=_require(raw, "max_image_bytes", where),
        max_request_bytes=_require(raw, "max_request_bytes", where),
        max_side=_require(raw, "max_side", where),
        target_side=_require(raw, "target_side", where),
        target_pixels=target_pixels,
        tokens=TokenFormula(kind, {k: float(v) for k, v in tokens.items() if k != "kind"}),
        sources=tuple(raw.get("sources") or ()),
        price=_price(raw.get("price"), where),
    )


def _price(raw: Any, where: str) -> Price | None:
    """The optional `price` of a family; every figure must name where it came from."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise LimitsError(f"{where}.price must be a mapping of {', '.join(PRICE_KEYS)}: {raw!r}")
    for key in raw:
        if key not in PRICE_KEYS:
            raise LimitsError(f"{where}.price.{key} is not a price key ({', '.join(PRICE_KEYS)})")
    rates = {}
    for key in PRICE_KEYS[:2]:
        value = raw.get(key)
        if value is None:
            raise LimitsError(f"{where}.price.{key} is missing")
        # A free model may cost 0; a negative price is a typo.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise LimitsError(f"{where}.price.{key} must be a number >= 0: {value!r}")
        rates[key] = float(value)
    texts = {}
    for key in PRICE_KEYS[2:]:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise LimitsError(f"{where}.price.{key} must be a non-empty string: {value!r}")
        texts[key] = value.strip()
    return Price(input_per_million=rates["input_per_million"],
                 output_per_million=rates["output_per_million"],
                 currency=texts["currency"], source=texts["source"])


def parse_catalog(raw: dict[str, Any]) -> Catalog:
    families_raw = _require(raw, "families", "models.yml", dict)
    families = {name: _family(name, body or {}) for name, body in families_raw.items()}
    if "generic" not in families:
        raise LimitsError("families.generic is missing: unknown endpoints need a default")
    bounds = _require(raw, "input", "models.yml", dict)
    return Catalog(
        families=families,
        input=InputBounds(
            max_file_bytes=_require(bounds, "max_file_bytes", "input"),
            max_pixels=_require(bounds, "max_pixels", "input"),
        ),
    )


@lru_cache(maxsize=8)
def load_catalog(path: str | None = None) -> Catalog:
    """Parse models.yml once per process (executors included)."""
    file = Path(path) if path else conf_dir() / "models.yml"
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LimitsError(f"cannot read {file}: {exc.strerror}") from None
    return parse_catalog(raw or {})
