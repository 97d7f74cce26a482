"""Probe and prepare one image for a model family: pure functions over bytes, no Spark.

Every input ends as exactly one of two values: `Prepared` (bytes that fit the family's limits,
ready to send) or `Rejected` (an invalid error class and one sentence saying why).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.images.limits import InputBounds, ModelFamily
from pipeline.outcomes import ErrorClass

# What we agree to decode. Restricting Pillow's plugins keeps exotic decoders (EPS needs
# Ghostscript, PSD, ICNS...) out of the worker; everything decodable is converted to a
# format the model accepts, so TIFF scans and BMPs still get captioned.
# (Camera MPO files open through the JPEG plugin and report format "MPO".)
DECODABLE = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")

# Pillow's own bomb check fires inside open(), before the format and size are known; ours
# (in _prepare_open, from the header, before any pixel is decoded) replaces it so the row can
# say what the file claimed. The limit itself lives in conf/models.yml (input.max_pixels).
Image.MAX_IMAGE_PIXELS = None

# Leading bytes of image formats we recognise but do not decode: `unsupported_format`
# rather than `not_an_image`, so the user knows converting them would help.
_UNSUPPORTED_SIGNATURES = (
    (b"<svg", "SVG"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"%!PS-Adobe", "EPS"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
)
_ISO_BMFF_BRANDS = {  # ftyp brands of HEIF-family containers
    b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
    b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF",
}

# Quality steps tried before shrinking further; a fixed ladder keeps the work bounded.
_JPEG_QUALITIES = (85, 72, 60, 45)
_SHRINK_STEP = 0.75
_MAX_SHRINKS = 8

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


@dataclass(frozen=True)
class Prepared:
    """An image ready to send: original facts plus what will be sent."""

    format: str
    width: int
    height: int
    data: bytes
    mime: str
    sent_width: int
    sent_height: int

    @property
    def sent_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Rejected:
    """A file that will not be sent: an invalid error class and one human sentence."""

    error_class: ErrorClass
    message: str
    format: str | None = None
    width: int | None = None
    height: int | None = None


def check_length(length: int, bounds: InputBounds) -> Rejected | None:
    """The checks that need only the listed length, so bytes are never read for them."""
    if length == 0:
        return Rejected(ErrorClass.EMPTY_FILE, "The file is empty.")
    if length > bounds.max_file_bytes:
        return Rejected(
            ErrorClass.TOO_LARGE,
            f"The file is {_mb(length)}, over the {_mb(bounds.max_file_bytes)} read limit.",
        )
    return None


def sniff_unsupported(head: bytes) -> str | None:
    """Name of an image format we recognise by its leading bytes but do not decode."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<?xml") and b"<svg" in head[:1024]:
        return "SVG"
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if stripped.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        return _ISO_BMFF_BRANDS.get(head[8:12])
    return None


def target_size(width: int, height: int, family: ModelFamily) -> tuple[int, int]:
    """Largest size, aspect preserved, within the family's recommended side and pixels."""
    scale = min(1.0, family.target_side / max(width, height), family.max_side / max(width, height))
    if family.target_pixels:
        scale = min(scale, math.sqrt(family.target_pixels / (width * height)))
    return max(1, int(width * scale)), max(1, int(height * scale))


def largest_image_tokens(family: ModelFamily) -> int:
    """The most image tokens one image can cost once prepared for `family`: at the largest
    size it is sent at, for shapes from square to 1:8 (tiled formulas favour long shapes)."""
    big = 1 << 16
    return max(family.image_tokens(*target_size(big, round(big / ratio), family))
               for ratio in (1, 4 / 3, 3 / 2, 2, 3, 4, 6, 8))


def prepare(
    content: bytes, family: ModelFamily, bounds: InputBounds, max_bytes: int
) -> Prepared | Rejected:
    """Decode, orient, convert and downscale `content` until it fits `max_bytes` and the
    family's limits; or say why it cannot be sent."""
    rejected = check_length(len(content), bounds)
    if rejected:
        return rejected
    try:
        with Image.open(io.BytesIO(content), formats=DECODABLE) as img:
            return _prepare_open(img, content, family, bounds, max_bytes)
    except UnidentifiedImageError:
        name = sniff_unsupported(content[:1024])
        if name:
            return Rejected(ErrorClass.UNSUPPORTED_FORMAT, f"{name} images are not supported.",
                            name)
        return Rejected(ErrorClass.NOT_AN_IMAGE, "The bytes are not an image in any known format.")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # A header Pillow recognises but cannot parse: an image, damaged.
        return Rejected(ErrorClass.CORRUPT_IMAGE, f"The image header is damaged ({exc}).")


def _prepare_open(
    img: Image.Image, content: bytes, family: ModelFamily, bounds: InputBounds, max_bytes: int
) -> Prepared | Rejected:
    fmt = img.format or "UNKNOWN"
    stored_w, stored_h = img.size
    if stored_w * stored_h > bounds.max_pixels:
        return Rejected(
            ErrorClass.DECOMPRESSION_BOMB,
            f"The image claims {stored_w}x{stored_h} pixels, over the "
            f"{bounds.max_pixels:,} pixel limit.",
            fmt,
            stored_w,
            stored_h,
        )
    orientation = _orientation(img)
    swapped = orientation in (5, 6, 7, 8)
    width, height = (stored_h, stored_w) if swapped else (stored_w, stored_h)
    goal_w, goal_h = target_size(width, height, family)
    if fmt in ("JPEG", "MPO") and (goal_w, goal_h) != (width, height):
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: the big speed-up on photos.
        img.draft(img.mode, (goal_h, goal_w) if swapped else (goal_w, goal_h))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return Rejected(ErrorClass.CORRUPT_IMAGE,
                        f"The {fmt} data is truncated or corrupt ({exc}).", fmt)
    unchanged = (
        fmt in family.formats
        and orientation in (0, 1)
        and img.mode in ("RGB", "L")
        and (goal_w, goal_h) == (width, height)
        and not getattr(img, "is_animated", False)
        and len(content) <= max_bytes
    )
    if unchanged:
        return Prepared(fmt, width, height, content, _MIME[fmt], width, height)
    try:
        flat = to_rgb_or_l(ImageOps.exif_transpose(img) if orientation > 1 else img)
    except (OSError, ValueError) as exc:
        return Rejected(ErrorClass.CORRUPT_IMAGE, f"The {fmt} data cannot be decoded ({exc}).", fmt)
    return _encode_to_fit(flat, fmt, width, height, (goal_w, goal_h), family, max_bytes)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block is not worth rejecting the picture for
        return 1


def to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Flatten any mode to 8-bit RGB or L: alpha onto white, 16-bit scaled, CMYK converted."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode.startswith("I;16") or mode == "I":
        # convert("L") would clip 16-bit values at 255 (a white picture); scale instead.
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        return img.convert("RGB" if mode != "1" else "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _encode_to_fit(
    img: Image.Image,
    fmt: str,
    width: int,
    height: int,
    goal: tuple[int, int],
    family: ModelFamily,
    max_bytes: int,
) -> Prepared | Rejected:
    out_format = "JPEG" if "JPEG" in family.formats else family.formats[0]
    size = goal
    for _ in range(_MAX_SHRINKS):
        resized = img if img.size == size else img.resize(size, Image.Resampling.LANCZOS,
                                                          reducing_gap=3.0)
        for quality in _JPEG_QUALITIES if out_format == "JPEG" else (None,):
            buf = io.BytesIO()
            options = {"quality": quality} if quality else {"optimize": True}
            resized.save(buf, out_format, **options)
            if buf.tell() <= max_bytes:
                return Prepared(fmt, width, height, buf.getvalue(), _MIME[out_format], *size)
        size = (max(1, int(size[0] * _SHRINK_STEP)), max(1, int(size[1] * _SHRINK_STEP)))
    return Rejected(
        ErrorClass.TOO_LARGE,
        f"Even downscaled to {size[0]}x{size[1]} the image does not fit in {_mb(max_bytes)}.",
        fmt,
        width,
        height,
    )


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"
