"""Image and non-image files built in code for the tests: every kind users' folders hold.

`hostile_folder()` is the reference set: file name, bytes, expected status and error class.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# What a `--response-schema` file holds in the tests of structured answers: a caption, an
# enum, an integer, all required, nothing else.
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "category": {"enum": ["product", "document", "scene", "other"]},
        "count": {"type": "integer"},
    },
    "required": ["caption", "category", "count"],
    "additionalProperties": False,
}


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth picture: cheap to encode at any size, yet not a flat colour."""
    ramp = Image.linear_gradient("L")
    x = ramp.resize((width, height))
    y = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    if mode == "L":
        return x
    rgb = Image.merge("RGB", (x, y, Image.new("L", (width, height), 128)))
    return rgb.convert(mode) if mode != "RGB" else rgb


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def jpeg(width: int = 64, height: int = 48, quality: int = 85, **options) -> bytes:
    return encode(gradient(width, height), "JPEG", quality=quality, **options)


def png(width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    return encode(gradient(width, height, mode), "PNG")


def rotated_jpeg(width: int = 80, height: int = 40, orientation: int = 6) -> bytes:
    """A phone photo: stored landscape, EXIF says rotate (6: 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(width, height, exif=exif.tobytes())


def cmyk_jpeg() -> bytes:
    return encode(gradient(64, 48, "CMYK"), "JPEG")


def png_16bit() -> bytes:
    img = Image.linear_gradient("L").resize((64, 48)).convert("I")
    img = img.point(lambda v: v * 256).convert("I;16")
    return encode(img, "PNG")


def png_alpha() -> bytes:
    img = gradient(64, 48, "RGBA")
    img.putalpha(Image.linear_gradient("L").resize((64, 48)))
    return encode(img, "PNG")


def png_palette_transparent() -> bytes:
    img = gradient(64, 48).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def tiff_scan() -> bytes:
    return encode(gradient(120, 160, "L"), "TIFF", compression="tiff_lzw")


def bmp() -> bytes:
    return encode(gradient(50, 40), "BMP")


def webp() -> bytes:
    return encode(gradient(64, 48), "WEBP", quality=80)


def truncated_jpeg() -> bytes:
    data = jpeg(200, 150)
    return data[: len(data) // 2]


def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def svg() -> bytes:
    return b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" ' \
        b'height="10"><rect width="10" height="10"/></svg>\n'


def heic() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (1.6 gigapixels by default)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(
        b"IEND", b""
    )


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: str  # ok or invalid
    error_class: str | None = None
    format: str | None = None


def hostile_cases() -> list[Case]:
    """Every kind of file issue 3 names, with what vision-batch must make of it."""
    return [
        Case("plain photo.jpg", jpeg(), "ok", format="JPEG"),
        Case("phone rotated.jpg", rotated_jpeg(), "ok", format="JPEG"),
        Case("big camera.jpg", jpeg(4000, 3000, quality=70), "ok", format="JPEG"),
        Case("no extension", jpeg(32, 32), "ok", format="JPEG"),
        Case("cmyk print.jpg", cmyk_jpeg(), "ok", format="JPEG"),
        Case("scan.tiff", tiff_scan(), "ok", format="TIFF"),
        Case("screenshot alpha.png", png_alpha(), "ok", format="PNG"),
        Case("sixteen bit.png", png_16bit(), "ok", format="PNG"),
        Case("palette.png", png_palette_transparent(), "ok", format="PNG"),
        Case("animated.gif", animated_gif(), "ok", format="GIF"),
        Case("old.bmp", bmp(), "ok", format="BMP"),
        Case("modern.webp", webp(), "ok", format="WEBP"),
        Case("café crème.jpg", jpeg(40, 40), "ok", format="JPEG"),
        Case("empty.jpg", b"", "invalid", "empty_file"),
        Case("invoice.jpg", pdf(), "invalid", "not_an_image"),
        Case("notes.png", b"just some text, not a picture\n" * 10, "invalid", "not_an_image"),
        Case("vector.svg", svg(), "invalid", "unsupported_format", "SVG"),
        Case("iphone.heic", heic(), "invalid", "unsupported_format", "HEIC"),
        Case("download.jpg", truncated_jpeg(), "invalid", "corrupt_image", "JPEG"),
        Case("bomb.png", png_bomb(), "invalid", "decompression_bomb", "PNG"),
    ]


def write_photos(
    folder: Path, count: int, name: str, size: Callable[[int], tuple[int, int]]
) -> Path:
    """`count` JPEGs named name.format(i), image i of size(i): distinct sizes give distinct
    bytes and captions that say which image they describe."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / name.format(i)).write_bytes(jpeg(*size(i)))
    return folder


def write_folder(folder: Path, cases: list[Case]) -> dict[str, Case]:
    """Write the cases under `folder` (some in a sub-folder); return them by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        target = folder / ("nested" if i % 3 == 0 else "") / case.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(case.data)
    return {c.name: c for c in cases}
