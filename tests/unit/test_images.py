"""Image probing and preparation: every hostile kind, pure functions, no Spark."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image, ImageStat

from pipeline.images.limits import load_catalog
from pipeline.images.prepare import Prepared, Rejected, check_length, prepare, sniff_unsupported
from tests import files

CATALOG = load_catalog()
GENERIC = CATALOG.families["generic"]
CLAUDE = CATALOG.families["claude"]
BOUNDS = CATALOG.input
BUDGET = 2_900_000


def decoded(result: Prepared) -> Image.Image:
    img = Image.open(io.BytesIO(result.data))
    img.load()
    return img


@pytest.mark.parametrize("case", files.hostile_cases(), ids=lambda c: c.name)
def test_each_kind_ends_with_the_right_status_and_class(case: files.Case) -> None:
    result = prepare(case.data, GENERIC, BOUNDS, BUDGET)
    if case.status == "ok":
        assert isinstance(result, Prepared), result
        assert result.format == case.format
        # What is sent is always something the family accepts, within its limits.
        sent = decoded(result)
        assert sent.format in GENERIC.formats
        assert result.mime == Image.MIME[sent.format]
        assert sent.size == (result.sent_width, result.sent_height)
        assert max(sent.size) <= GENERIC.target_side
        assert result.sent_bytes <= BUDGET
    else:
        assert isinstance(result, Rejected)
        assert (result.error_class, result.format) == (case.error_class, case.format)
        assert result.message.endswith(".") and "\n" not in result.message


def test_exif_orientation_is_applied_and_reported() -> None:
    result = prepare(files.rotated_jpeg(80, 40, orientation=6), GENERIC, BOUNDS, BUDGET)
    assert (result.width, result.height) == (40, 80)
    assert decoded(result).size == (40, 80)


def test_large_photo_is_downscaled_with_aspect_kept_to_the_recommended_size() -> None:
    result = prepare(files.jpeg(4000, 3000, quality=70), CLAUDE, BOUNDS, BUDGET)
    assert (result.width, result.height) == (4000, 3000)
    assert result.sent_width * result.sent_height <= CLAUDE.target_pixels
    assert max(result.sent_width, result.sent_height) <= CLAUDE.target_side
    assert abs(result.sent_width / result.sent_height - 4 / 3) < 0.01


def test_small_accepted_image_is_sent_byte_for_byte() -> None:
    data = files.jpeg(64, 48)
    result = prepare(data, GENERIC, BOUNDS, BUDGET)
    assert result.data == data


def test_sixteen_bit_png_keeps_its_tones_instead_of_clipping_to_white() -> None:
    result = prepare(files.png_16bit(), GENERIC, BOUNDS, BUDGET)
    mean = ImageStat.Stat(decoded(result).convert("L")).mean[0]
    assert 60 < mean < 200


def test_transparent_pixels_become_white_not_black() -> None:
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    result = prepare(files.encode(img, "PNG"), GENERIC, BOUNDS, BUDGET)
    assert ImageStat.Stat(decoded(result).convert("L")).mean[0] > 250


def test_animated_gif_sends_its_first_frame() -> None:
    result = prepare(files.animated_gif(), GENERIC, BOUNDS, BUDGET)
    r, g, b = decoded(result).convert("RGB").getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60


def test_webp_passes_through_for_a_family_that_accepts_it() -> None:
    data = files.webp()
    result = prepare(data, CLAUDE, BOUNDS, BUDGET)
    assert result.data == data and result.mime == "image/webp"


def test_re_encoding_shrinks_until_the_byte_budget_fits() -> None:
    noisy = Image.effect_noise((1500, 1000), 120).convert("RGB")
    data = files.encode(noisy, "PNG")
    result = prepare(data, GENERIC, BOUNDS, 60_000)
    assert isinstance(result, Prepared)
    assert result.sent_bytes <= 60_000
    assert result.sent_width < 1500


def test_an_impossible_byte_budget_is_too_large_not_a_crash() -> None:
    result = prepare(files.jpeg(300, 200), GENERIC, BOUNDS, 10)
    assert isinstance(result, Rejected) and result.error_class == "too_large"


def test_length_gate_needs_no_bytes() -> None:
    small = replace(BOUNDS, max_file_bytes=1000)
    assert check_length(0, small).error_class == "empty_file"
    assert check_length(1001, small).error_class == "too_large"
    assert check_length(1000, small) is None


def test_bomb_limit_comes_from_the_bounds() -> None:
    tight = replace(BOUNDS, max_pixels=10_000)
    result = prepare(files.jpeg(200, 100), GENERIC, tight, BUDGET)
    assert result.error_class == "decompression_bomb"
    assert (result.width, result.height) == (200, 100)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"<svg xmlns='http://www.w3.org/2000/svg'>", "SVG"),
        (b"\x00\x00\x00\x1cftypavif", "AVIF"),
        (b"8BPS\x00\x01", "PSD"),
        (b"%PDF-1.7", None),
        (b"hello", None),
    ],
)
def test_sniffing_names_formats_we_recognise_but_do_not_decode(head: bytes, name) -> None:
    assert sniff_unsupported(head) == name
