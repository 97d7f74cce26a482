"""The local endpoint's answers that are no captions (pipeline/local/bad_answers.py): chosen
deterministically by seed and body digest, in about the shares asked for, and each schema
break one the pipeline's validator catches. Over HTTP: tests/e2e/test_bad_answers.py."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest

from pipeline.endpoint.payloads import PromptSpec, chat_body, encode
from pipeline.endpoint.schemas import answer_problem
from pipeline.local import command
from pipeline.local.bad_answers import (
    SCHEMA_BREAKS,
    BadAnswers,
    break_schema,
    cut_off,
    pick_bad_answer,
    pick_schema_break,
)
from pipeline.local.describer import describe, measure
from tests import files

SCHEMA = files.ANSWER_SCHEMA
SPEC = PromptSpec("Describe.", max_tokens=50)


def digests(n: int) -> list[str]:
    """The digests of n distinct one-image request bodies, as the endpoint computes them."""
    return [hashlib.sha256(encode(chat_body(SPEC, [("image/jpeg", files.jpeg(16 + i, 12))])))
            .hexdigest() for i in range(n)]


KEYS = digests(200)


@pytest.mark.parametrize(("rates", "kind"), [({"rate_cut_off": 0.15}, "cut_off"),
                                             ({"rate_refusal": 0.3}, "refusal")])
def test_each_body_is_cut_off_or_refused_the_same_way_every_time_in_about_the_share(
    rates: dict[str, float], kind: str
) -> None:
    bad = BadAnswers(**rates, seed=7)
    picked = [pick_bad_answer(bad, key) for key in KEYS]
    assert picked == [pick_bad_answer(BadAnswers(**rates, seed=7), key) for key in KEYS]
    share = next(iter(rates.values()))
    assert set(picked) == {kind, None}
    assert abs(picked.count(kind) / len(KEYS) - share) < 0.07
    # Another seed picks other bodies, in about the same share.
    other = [pick_bad_answer(BadAnswers(**rates, seed=8), key) for key in KEYS]
    assert other != picked and abs(other.count(kind) / len(KEYS) - share) < 0.07


def test_cut_offs_and_refusals_never_fall_on_the_same_body() -> None:
    bad = BadAnswers(rate_cut_off=0.5, rate_refusal=0.5)
    picked = [pick_bad_answer(bad, key) for key in KEYS]
    assert None not in picked and 60 < picked.count("cut_off") < 140


def test_a_schema_break_is_drawn_again_for_each_sighting_of_a_body() -> None:
    bad = BadAnswers(rate_schema_break=0.15, seed=3)
    first = [pick_schema_break(bad, key, 0) for key in KEYS]
    assert first == [pick_schema_break(bad, key, 0) for key in KEYS]
    assert abs(sum(first) / len(KEYS) - 0.15) < 0.07
    # A model that breaks the schema now and then may keep it when asked again.
    second = [pick_schema_break(bad, key, 1) for key in KEYS]
    assert second != first and abs(sum(second) / len(KEYS) - 0.15) < 0.07
    assert not any(pick_schema_break(BadAnswers(), key, 0) for key in KEYS)


def answer() -> str:
    return describe([measure(files.jpeg(40, 30))], SCHEMA, "Describe.")


@pytest.mark.parametrize(("way", "where"), [("enum", "$.category"), ("type", "$.count"),
                                            ("required", "$")])
def test_each_way_of_breaking_the_schema_is_caught_by_the_validator(way: str,
                                                                    where: str) -> None:
    assert answer_problem(json.loads(answer()), SCHEMA) is None  # the model's own fits
    broken = break_schema(answer(), SCHEMA, "key", 0, (way,))
    assert broken is not None and broken[1] == way
    problem = answer_problem(json.loads(broken[0]), SCHEMA)
    assert problem is not None and problem.startswith(f"{where}: ")
    if way == "required":  # another field than the caption is left out
        assert "'caption'" not in problem


def test_the_way_is_chosen_by_the_body_among_those_the_schema_allows() -> None:
    ways = [break_schema(answer(), SCHEMA, key, 0) for key in KEYS[:60]]
    assert {w[1] for w in ways if w} == set(SCHEMA_BREAKS)
    assert ways == [break_schema(answer(), SCHEMA, key, 0) for key in KEYS[:60]]
    only_enum = {"type": "object", "properties": {"caption": {"type": "string"},
                                                  "category": {"enum": ["a", "b"]}}}
    content = json.dumps({"caption": "x", "category": "a"})
    assert {break_schema(content, only_enum, key, 0)[1] for key in KEYS[:20]} == {"enum"}
    assert break_schema(content, {"type": "object"}, "key", 0) is None  # nothing to break


def test_a_cut_off_answer_stops_mid_sentence_within_max_tokens() -> None:
    text = "A landscape colour image, mostly beige and teal with some green."
    cut = cut_off(text, max_tokens=5)
    assert text.startswith(cut) and len(cut) <= 20 and not cut.endswith(".")
    assert len(cut_off(text, None)) == len(text) * 2 // 3


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rate_cut_off": 1.5}, "--rate-cut-off must be between 0 and 1"),
        ({"rate_refusal": -0.1}, "--rate-refusal must be between 0 and 1"),
        ({"rate_schema_break": float("nan")}, "--rate-schema-break must be between 0 and 1"),
        ({"rate_cut_off": 0.7, "rate_refusal": 0.4}, "sum to 1.1"),
        ({"schema_breaks": ("enum", "colour")}, "--schema-breaks must name some of"),
    ],
)
def test_bad_rates_are_refused_naming_the_flag(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BadAnswers(**options)


def test_serve_local_takes_the_shares_as_flags() -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--rate-cut-off", "0.15", "--rate-refusal", "0.05",
                              "--rate-schema-break", "0.2", "--schema-breaks", "enum,type",
                              "--seed", "4"])
    bad = command.options_from_args(args, "token").bad_answers
    assert bad == BadAnswers(0.15, 0.05, 0.2, ("enum", "type"), seed=4)
    with pytest.raises(ValueError, match="--rate-schema-break"):
        command.options_from_args(parser.parse_args(["--rate-schema-break", "2"]), "token")


@pytest.mark.parametrize("structured", [True, False], ids=["schema", "plain"])
def test_a_packed_answer_has_one_entry_broken_and_the_others_kept(structured: bool) -> None:
    from pipeline.endpoint.packing import packed_spec, parse_packed

    spec = packed_spec(PromptSpec("Describe.", 400, None, SCHEMA if structured else None), 4)
    measured = [measure(files.jpeg(30 + i, 20)) for i in range(4)]
    content = describe(measured, spec.response_schema)
    user = PromptSpec("Describe.", 400, None, SCHEMA if structured else None)
    broken_entries = set()
    for key in KEYS[:24]:
        broken = break_schema(content, spec.response_schema, key, 0)
        assert broken is not None
        raw = json.dumps({"choices": [{"message": {"content": broken[0]},
                                       "finish_reason": "stop"}]}).encode()
        packed = parse_packed(raw, 4, user)
        assert packed.answers is not None and len(packed.again) == 1  # one entry, not all
        broken_entries.update(packed.again)
        if not structured:
            assert broken[1] == "required"  # the caption left out; the index never touched
    assert broken_entries == {0, 1, 2, 3}  # which entry is chosen by the body
