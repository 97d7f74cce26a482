"""The local reference model: an honest describer that measures pixels, no neural network.

It lets the whole pipeline run end to end without a workspace: the answers are real facts
about each image (size, light, contrast, dominant colours, detail) and say plainly that they
come from measurement, so nobody mistakes them for a vision model's captions.
Pure functions over bytes; the same bytes always give the same words.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from PIL import Image, ImageFilter, ImageOps, ImageStat, UnidentifiedImageError

SIGNATURE = (
    "(Described by the vision-batch local reference model from measured pixels, "
    "not a vision model.)"
)
NO_IMAGE = "No image was given, so the vision-batch local reference model has nothing to describe."

# Plain-English names and a representative RGB for each; the nearest one names a colour.
NAMED_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("dark grey", (64, 64, 64)),
    ("grey", (128, 128, 128)),
    ("light grey", (192, 192, 192)),
    ("white", (255, 255, 255)),
    ("red", (200, 30, 30)),
    ("dark red", (115, 15, 15)),
    ("orange", (235, 130, 25)),
    ("brown", (125, 80, 40)),
    ("yellow", (235, 215, 40)),
    ("olive", (120, 120, 20)),
    ("green", (50, 165, 50)),
    ("dark green", (20, 80, 30)),
    ("teal", (0, 128, 128)),
    ("light blue", (140, 185, 230)),
    ("blue", (40, 90, 210)),
    ("navy", (15, 25, 95)),
    ("purple", (120, 50, 160)),
    ("pink", (235, 150, 185)),
    ("beige", (220, 200, 160)),
)

# Word thresholds, tuned on the bundled samples so the words match what a person would say.
_BRIGHTNESS = ((60.0, "dark"), (105.0, "dim"), (170.0, "moderately lit"))
_CONTRAST = ((35.0, "low contrast"), (60.0, "medium contrast"))
_DETAIL = ((12.0, "smooth"), (30.0, "textured"))
# Hasler and Suesstrunk's colourfulness metric: below this a picture reads as greyscale.
_GREYSCALE_BELOW = 8.0
_THUMB = (128, 128)
_PALETTE = 8
# A second or third colour is named only if it covers this share of the thumbnail.
_SECOND_SHARE = 0.15
_THIRD_SHARE = 0.10

_TAG_FIELDS = ("tags", "colors", "colours", "keywords", "labels")


@dataclass(frozen=True)
class Measurements:
    width: int  # as sent, after EXIF orientation
    height: int
    orientation: str  # landscape, portrait or square
    brightness: float  # mean of L, 0-255
    brightness_word: str
    contrast: float  # standard deviation of L
    contrast_word: str
    colourfulness: float
    greyscale: bool
    colours: tuple[str, ...]  # dominant first, 1 to 3 names
    edge_density: float  # mean of FIND_EDGES over L
    detail_word: str


def measure(data: bytes) -> Measurements:
    """Decode `data` cheaply and measure it; ValueError if Pillow cannot decode it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = _oriented_size(img)
            if img.format in ("JPEG", "MPO"):
                # Decode straight from the DCT at 1/2..1/8 scale: we only need a thumbnail.
                img.draft("RGB", (256, 256))
            thumb = _flatten(ImageOps.exif_transpose(img))
    except (
        UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
        EOFError,
    ) as exc:
        raise ValueError(f"the bytes are not an image Pillow can decode ({exc})") from None
    thumb.thumbnail(_THUMB)
    grey = thumb.convert("L")
    stat = ImageStat.Stat(grey)
    brightness, contrast = stat.mean[0], stat.stddev[0]
    edges = ImageStat.Stat(grey.filter(ImageFilter.FIND_EDGES)).mean[0]
    colourfulness = _colourfulness(thumb)
    return Measurements(
        width=width,
        height=height,
        orientation=_orientation_word(width, height),
        brightness=round(brightness, 2),
        brightness_word=_word(brightness, _BRIGHTNESS, "bright"),
        contrast=round(contrast, 2),
        contrast_word=_word(contrast, _CONTRAST, "high contrast"),
        colourfulness=round(colourfulness, 2),
        greyscale=colourfulness < _GREYSCALE_BELOW,
        colours=dominant_colours(thumb),
        edge_density=round(edges, 2),
        detail_word=_word(edges, _DETAIL, "highly detailed"),
    )


def caption(m: Measurements) -> str:
    kind = "greyscale" if m.greyscale else "colour"
    article = "An" if m.orientation[0] in "aeiou" else "A"
    return (
        f"{article} {m.orientation} {kind} image, {m.width}x{m.height} pixels, "
        f"{_colour_phrase(m.colours)}; {m.brightness_word}, {m.contrast_word} and "
        f"{m.detail_word}. {SIGNATURE}"
    )


def tags(m: Measurements) -> list[str]:
    return [*m.colours, m.orientation, m.brightness_word]


def answer(prompt: str, images: list[bytes], response_schema: dict[str, Any] | None) -> str:
    """The assistant's text for one request."""
    return describe([measure(data) for data in images], response_schema, prompt)


def describe(measured: list[Measurements], response_schema: dict[str, Any] | None,
             prompt: str = "") -> str:
    """`answer` for images already measured (a server that validated them has them). The
    prompt cannot change what pixels measure; a plain-text prompt that asks for a list, tags
    or keywords gets the measured tags instead of a sentence, so that two prompts can be
    compared side by side (`vision-batch compare`)."""
    if response_schema is not None:
        return json.dumps(_fill(response_schema, "", measured), ensure_ascii=False)
    if not measured:
        return NO_IMAGE
    say = listed if _TAGS_ASKED.search(prompt) else caption
    if len(measured) == 1:
        return say(measured[0])
    return "\n".join(f"Image {i}: {say(m)}" for i, m in enumerate(measured, 1))


_TAGS_ASKED = re.compile(r"\b(list|tags|keywords)\b", re.IGNORECASE)


def listed(m: Measurements) -> str:
    return f"{', '.join(tags(m))}. {SIGNATURE}"


def dominant_colours(img: Image.Image) -> tuple[str, ...]:
    """The 1-3 colour names covering most of `img` (an RGB thumbnail), dominant first."""
    quantized = img.quantize(colors=_PALETTE)
    palette = quantized.getpalette() or []
    shares: Counter[str] = Counter()
    # A "P" image's colours are (count, palette index); Pillow's type covers every mode.
    colours = cast("list[tuple[int, int]]", quantized.getcolors() or [])
    for count, index in colours:
        rgb = tuple(palette[3 * index : 3 * index + 3])
        shares[nearest_colour(rgb)] += count  # type: ignore[arg-type]
    total = sum(shares.values()) or 1
    # Sort by share, then by name, so ties never depend on dict order.
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    names = [ranked[0][0]] if ranked else ["grey"]
    for (name, count), floor in zip(ranked[1:3], (_SECOND_SHARE, _THIRD_SHARE), strict=False):
        if count / total < floor:
            break
        names.append(name)
    return tuple(names)


def nearest_colour(rgb: tuple[int, int, int]) -> str:
    # "Redmean" weighting: a cheap approximation of perceived distance, better than plain RGB.
    def distance(ref: tuple[int, int, int]) -> float:
        rmean = (rgb[0] + ref[0]) / 2
        dr, dg, db = rgb[0] - ref[0], rgb[1] - ref[1], rgb[2] - ref[2]
        return (2 + rmean / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rmean) / 256) * db * db

    return min(NAMED_COLOURS, key=lambda named: distance(named[1]))[0]


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """The stored size with EXIF rotation applied, read before draft() shrinks it."""
    width, height = img.size
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block only loses the rotation
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _flatten(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: alpha over white, 16-bit scaled rather than clipped."""
    if img.mode.startswith("I;16") or img.mode == "I":
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _colourfulness(img: Image.Image) -> float:
    """Hasler and Suesstrunk (2003): spread and mean of the opponent channels rg and yb."""
    n = img.width * img.height
    sum_rg = sum_yb = sq_rg = sq_yb = 0.0
    reds, greens, blues = (band.tobytes() for band in img.split())
    for r, g, b in zip(reds, greens, blues, strict=True):
        rg, yb = r - g, (r + g) / 2 - b
        sum_rg += rg
        sum_yb += yb
        sq_rg += rg * rg
        sq_yb += yb * yb
    mean_rg, mean_yb = sum_rg / n, sum_yb / n
    var_rg = max(0.0, sq_rg / n - mean_rg**2)
    var_yb = max(0.0, sq_yb / n - mean_yb**2)
    return math.sqrt(var_rg + var_yb) + 0.3 * math.hypot(mean_rg, mean_yb)


def _orientation_word(width: int, height: int) -> str:
    if width == height:
        return "square"
    return "landscape" if width > height else "portrait"


def _word(value: float, steps: tuple[tuple[float, str], ...], top: str) -> str:
    return next((word for limit, word in steps if value < limit), top)


def _colour_phrase(colours: tuple[str, ...]) -> str:
    if len(colours) == 1:
        return f"mostly {colours[0]}"
    if len(colours) == 2:
        return f"mostly {colours[0]} and {colours[1]}"
    return f"mostly {colours[0]} and {colours[1]} with some {colours[2]}"


def _fill(
    schema: dict[str, Any], name: str, measured: list[Measurements], index: int = 0
) -> Any:
    """A value for `schema` (a JSON Schema) chosen by the property's name and type, about
    image `index` of `measured`. A list of objects with an integer `index` property gets one
    entry per image, numbered from 1 (how a packed request asks for one answer per image)."""
    m = measured[index] if index < len(measured) else None
    if schema.get("enum"):
        return schema["enum"][0]  # any listed value is valid; the first is as good as any
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):  # e.g. ["string", "null"]
        kind = next((k for k in kind if k != "null"), "null")
    key = name.lower()
    if kind == "object":
        properties = schema.get("properties") or {}
        return {prop: _fill(sub or {}, prop, measured, index) for prop, sub in properties.items()}
    if kind == "string":
        return caption(m) if m else NO_IMAGE
    if kind in ("integer", "number"):
        if key == "index":
            return index + 1
        if m and key in ("width", "height"):
            return m.width if key == "width" else m.height
        return 0
    if kind == "boolean":
        return False
    if kind == "array":
        items = schema.get("items") or {}
        if "index" in (items.get("properties") or {}):
            return [_fill(items, "", measured, i) for i in range(len(measured))]
        item_type = items.get("type", "string")
        if m and item_type == "string" and any(word in key for word in _TAG_FIELDS):
            return tags(m)
        return []
    return None


__all__ = [
    "NO_IMAGE",
    "SIGNATURE",
    "Measurements",
    "answer",
    "caption",
    "describe",
    "dominant_colours",
    "measure",
    "nearest_colour",
    "tags",
]
