"""conf/models.yml: families by endpoint name, token formulas, and errors that name the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.images.limits import LimitsError, load_catalog, parse_catalog
from pipeline.resources import conf_dir

CATALOG = load_catalog()
RAW = yaml.safe_load((conf_dir() / "models.yml").read_text())


@pytest.mark.parametrize(
    ("endpoint", "family"),
    [
        ("databricks-claude-3-7-sonnet", "claude"),
        ("databricks-claude-sonnet-4-5", "claude"),
        ("databricks-llama-4-maverick", "llama4"),
        ("databricks-gemma-3-12b", "gemma3"),
        ("databricks-gpt-5", "gpt5"),
        ("databricks-gpt-5-mini", "gpt5"),
        ("databricks-gpt-5-nano", "gpt5"),
        ("my-finetuned-vlm", "generic"),
        ("local-reference", "generic"),
    ],
)
def test_endpoints_map_to_families_by_name(endpoint: str, family: str) -> None:
    assert CATALOG.family(endpoint).name == family


def test_explicit_family_wins_and_unknown_is_an_error() -> None:
    assert CATALOG.family("my-endpoint", "gemma3").name == "gemma3"
    with pytest.raises(LimitsError, match="model_family 'nope'"):
        CATALOG.family("x", "nope")


def test_every_family_has_a_source_and_the_safe_request_limit() -> None:
    for family in CATALOG.families.values():
        assert family.sources, family.name
        assert family.max_request_bytes <= 4_000_000, family.name
        assert family.target_side <= family.max_side, family.name
        assert "JPEG" in family.formats, family.name


@pytest.mark.parametrize(
    ("family", "size", "tokens"),
    [
        ("claude", (1000, 1000), 1334),  # ceil(1e6 / 750)
        ("claude", (4000, 4000), 1600),  # capped: the server scales it down
        ("gpt5", (1024, 1024), 70 + 140 * 4),  # short side to 768: 2x2 tiles
        ("gpt5", (4096, 2048), 70 + 140 * 6),  # fit 2048x1024, short 768 -> 1536x768: 3x2
        ("llama4", (900, 900), 1454),  # 9 tiles * 145 + 149, the documented example
        ("gemma3", (3000, 200), 256),
    ],
)
def test_token_formulas(family: str, size: tuple[int, int], tokens: int) -> None:
    assert CATALOG.families[family].image_tokens(*size) == tokens


def test_errors_name_the_key() -> None:
    broken = copy.deepcopy(RAW)
    del broken["families"]["claude"]["max_image_bytes"]
    with pytest.raises(LimitsError, match=r"families\.claude\.max_image_bytes is missing"):
        parse_catalog(broken)
    broken = copy.deepcopy(RAW)
    broken["families"]["gpt5"]["tokens"]["kind"] = "magic"
    with pytest.raises(LimitsError, match=r"families\.gpt5\.tokens\.kind"):
        parse_catalog(broken)
    broken = copy.deepcopy(RAW)
    broken["input"]["max_pixels"] = -1
    with pytest.raises(LimitsError, match=r"input\.max_pixels must be positive"):
        parse_catalog(broken)
