"""`estimate` predicts the run's time at the endpoint's limits, and names the binding one."""

from __future__ import annotations

from pipeline.estimate import Estimate, render


def planned(**limits: int) -> Estimate:
    return Estimate("ep", "claude", "p1", listed=10_000, sendable=10_000, requests=10_000,
                    image_tokens=3_400_000, text_tokens_per_request=20,
                    max_completion_tokens=256, limits=limits)


def test_the_binding_limit_comes_first_with_the_runs_time_at_it() -> None:
    e = planned(itpm=36_000, qph=20_000, otpm=100_000)
    # 3,600,000 input tokens at 36,000 a minute; 10,000 queries at 20,000 an hour; at most
    # 2,560,000 output tokens at 100,000 a minute.
    assert e.minutes_at_limits() == [("itpm", 100.0), ("qph", 30.0), ("otpm", 25.6)]
    line = next(row for row in render(e).splitlines() if row.startswith("at the limits"))
    assert line.endswith("10,000 images: about 100 min at 36,000 input tokens per minute "
                         "(the binding limit); about 30 min at 20,000 queries per hour; "
                         "about 26 min at 100,000 output tokens per minute")


def test_long_runs_are_told_in_hours_and_no_limit_no_line() -> None:
    assert "about 16.7 h at 600 queries per hour (the binding limit)" in render(planned(qph=600))
    assert "about under a minute" not in render(planned(rpm=100_000))
    assert "under a minute at 100,000 requests per minute" in render(planned(rpm=100_000))
    assert "at the limits" not in render(planned())


# -- max_tokens below what the answers need (issue #27) ---------------------------------------

def test_the_least_answer_of_a_schema_is_its_required_parts_at_their_shortest() -> None:
    from pipeline.endpoint.schemas import answer_problem, least_answer
    from tests import files

    least = least_answer(files.ANSWER_SCHEMA)
    assert least == {"caption": "", "category": "scene", "count": 0}
    assert answer_problem(least, files.ANSWER_SCHEMA) is None  # it fits
    nested = {"type": "object", "required": ["tags", "box"], "properties": {
        "tags": {"type": "array", "minItems": 2, "items": {"type": "string", "minLength": 1}},
        "box": {"type": ["object", "null"]}, "note": {"type": "string"}}}
    assert least_answer(nested) == {"tags": ["x", "x"], "box": None}


def test_estimate_warns_when_max_tokens_cannot_hold_the_schemas_least_answer() -> None:
    from pipeline.endpoint.payloads import PromptSpec
    from pipeline.estimate import max_tokens_warnings
    from tests import files

    spec = PromptSpec("Describe.", max_tokens=40, response_schema=files.ANSWER_SCHEMA)
    assert max_tokens_warnings(spec, 1, "ep", None) == []
    [warning] = max_tokens_warnings(spec, 4, "ep", None)  # 10 tokens an image of a pack
    assert warning.startswith("--max-tokens 40 leaves 10 tokens for each image of a pack, "
                              "fewer than even the shortest answer the response schema allows")


def test_estimate_warns_when_earlier_answers_to_the_prompt_needed_more() -> None:
    from pipeline.endpoint.payloads import PromptSpec
    from pipeline.estimate import MIN_ANSWERS, AnswerLengths, max_tokens_warnings

    spec = PromptSpec("Describe.", max_tokens=100)
    [warning] = max_tokens_warnings(spec, 1, "ep", AnswerLengths(300, 45, 180))
    assert warning == ("45 of 300 earlier answers to this prompt from ep needed more than the "
                       "100 tokens --max-tokens 100 leaves (the complete ones' p95 is 180 "
                       "tokens): about 15% of the answers would be cut off; raise --max-tokens")
    # Within the share, or too few answers to go by: no warning.
    assert max_tokens_warnings(spec, 1, "ep", AnswerLengths(300, 15, 99)) == []
    assert max_tokens_warnings(spec, 1, "ep", AnswerLengths(MIN_ANSWERS - 1, 19, None)) == []
