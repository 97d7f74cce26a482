"""Thumbnails: small JPEGs, made on executors at the edge. `thumbnail` turns a file's bytes
into a JPEG whose long side is at most THUMBNAIL_SIDE px, or None, never an error; `preview` adds
the file's current SHA-256 and why there is no thumbnail (a `Preview`). Pure functions: the
pandas UDF that runs them on executors is `read_previews`, at the Spark edge (pipeline.report).
"""

from __future__ import annotations

import hashlib
import io
from typing import NamedTuple

from PIL import Image, ImageOps

from pipeline.images.prepare import to_rgb_or_l  # the pipeline's one mode-flattening rule
from pipeline.outcomes import ErrorClass

THUMBNAIL_SIDE = 160  # px, long side: sharp in a 160 px card slot, ~3-9 KB as JPEG
THUMBNAIL_QUALITY = 60
# Never read for a thumbnail: nothing to see (empty), or too costly to read or decode.
NOT_READ = (ErrorClass.EMPTY_FILE, ErrorClass.TOO_LARGE, ErrorClass.DECOMPRESSION_BOMB)
# Formats a thumbnail is made from; the same set the pipeline decodes (pipeline.images.prepare).
DECODABLE = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")


class Preview(NamedTuple):
    """What the gallery knows about a file now: its thumbnail, its current SHA-256, or why
    there is no thumbnail."""

    jpeg: bytes | None
    sha256: str | None = None
    note: str | None = None


def thumbnail(content: bytes | None, max_pixels: int, side: int = THUMBNAIL_SIDE,
              quality: int = THUMBNAIL_QUALITY) -> bytes | None:
    """A JPEG whose long side is at most `side` px: EXIF-oriented, any mode flattened to RGB.
    None when the bytes do not decode (or claim more than `max_pixels`): never an error."""
    if not content:
        return None
    try:
        with Image.open(io.BytesIO(content), formats=DECODABLE) as img:
            if img.width * img.height > max_pixels:
                return None
            # JPEGs decode at 1/2..1/8 scale straight from the DCT: fast even for big photos.
            img.draft("RGB", (side, side))
            oriented = ImageOps.exif_transpose(img)
            flat = to_rgb_or_l(oriented).convert("RGB")
            flat.thumbnail((side, side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            flat.save(out, "JPEG", quality=quality, optimize=True)
            return out.getvalue()
    except Exception:  # a damaged file has many ways to fail in Pillow; a report never fails
        return None


def preview(content: bytes | None, max_pixels: int) -> Preview:
    if content is None:
        return Preview(None, None, "file not found")
    digest = hashlib.sha256(content).hexdigest()
    jpeg = thumbnail(content, max_pixels)
    return Preview(jpeg, digest, None if jpeg else "no preview: the file does not decode")


def _as_preview(value: bytes | Preview | None) -> Preview | None:
    if value is None or isinstance(value, Preview):
        return value
    return Preview(bytes(value))


def image_size(jpeg: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(jpeg)) as img:
            return img.size
    except Exception:
        return None
