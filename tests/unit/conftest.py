"""The unit tier: pure functions, fake clocks, no Spark. A test here that starts a local Spark
session (or a Connect server) fails at once: it belongs in tests/spark."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_: object, **__: object) -> None:
        raise AssertionError("the unit tier runs without Spark: move this test to tests/spark")

    monkeypatch.setattr("pipeline.spark._local_classic", refused)
    monkeypatch.setattr("pipeline.spark._local_connect", refused)
