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
