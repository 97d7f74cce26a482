"""Pure parts of the run layer: cutting the plan's stream into batches, the run's memory of
answers by content, the loop's read-ahead, the callers' budget, and the session choice."""

from __future__ import annotations

import sys
import threading
import types
from concurrent.futures import Future

import pytest

from pipeline import cli
from pipeline.endpoint.asking import CallPlan, Member
from pipeline.endpoint.auth import static
from pipeline.endpoint.client import ClientSettings
from pipeline.endpoint.payloads import PromptSpec
from pipeline.runs.callers import gathered
from pipeline.runs.loop import Ahead
from pipeline.runs.plan import Entry, cut
from pipeline.runs.single import Reuse


def entries(*keys: str | None) -> list[Entry]:
    return [Entry(f"file:/in/{i:03}.jpg", 10, 0, False, key) for i, key in enumerate(keys)]


def test_single_files_are_cut_into_batches_of_exactly_the_size() -> None:
    batches = list(cut(entries(*[None] * 7), 3, lambda e: e.path))
    assert [len(b.entries) for b in batches] == [3, 3, 1]
    assert [b.number for b in batches] == [1, 2, 3]
    assert [e.path for b in batches for e in b.entries] == [e.path for e in entries(*[None] * 7)]


def test_a_group_never_spans_two_batches() -> None:
    keys = ["a", "a", "b", "b", "b", "b", "c", "d", "d"]
    batches = list(cut(entries(*keys), 3, lambda e: e.group_key))
    # A batch closes once it holds 3 files, at the next group: a, a, b, b, b, b | c, d, d.
    assert [[e.group_key for e in b.entries] for b in batches] == [
        ["a", "a", "b", "b", "b", "b"], ["c", "d", "d"]]


def test_a_new_batch_is_one_no_file_of_which_had_a_row() -> None:
    (fresh,) = cut(entries("x"), 5, lambda e: e.path)
    assert fresh.new
    known = [Entry("file:/a", 1, 0, True), Entry("file:/b", 1, 0, False)]
    (mixed,) = cut(known, 5, lambda e: e.path)
    assert not mixed.new


def test_the_same_bytes_are_asked_once_per_run_whatever_the_batch() -> None:
    reuse = Reuse(capacity=4)
    assert reuse.claim({"s1": "a", "s2": "b"}) == {"s1": "a", "s2": "b"}
    # A later batch with the same bytes while the first is still being asked: not again.
    assert reuse.claim({"s1": "c", "s3": "d"}) == {"s3": "d"}
    answer = {"status": "ok", "caption": "x"}
    reuse.settle({"s1": ("a", answer)})
    assert reuse.answer("s1") == ("a", answer)
    assert reuse.claim({"s1": "e"}) == {}  # answered: taken, not asked
    for n in range(5):  # the oldest answers go first
        reuse.settle({f"t{n}": ("p", answer)})
    assert reuse.answer("s1") is None and reuse.answer("t4") is not None


def test_read_ahead_is_bounded_and_passes_errors_on() -> None:
    made: list[int] = []
    took = threading.Event()

    def items():
        for n in range(10):
            made.append(n)
            yield n

    with Ahead(items(), 1) as ahead:
        first = next(ahead)
        took.wait(0.3)
        # One taken, one waiting, one made and blocked: never the whole stream.
        assert first == 0 and len(made) <= 3

    def failing():
        yield 1
        raise RuntimeError("prepare failed")

    with Ahead(failing(), 1) as ahead, pytest.raises(RuntimeError, match="prepare failed"):
        list(ahead)


def test_answers_of_a_batch_are_gathered_in_order_once_all_are_in() -> None:
    futures = [Future() for _ in range(3)]
    answers = gathered(futures)
    futures[2].set_result([{"path": "c"}])
    futures[0].set_result([{"path": "a"}])
    assert not answers.done()
    futures[1].set_result([{"path": "b1"}, {"path": "b2"}])
    assert [r["path"] for r in answers.result()] == ["a", "b1", "b2", "c"]
    failed = [Future(), Future()]
    answers = gathered(failed)
    failed[0].set_exception(RuntimeError("the client broke"))
    failed[1].set_result([])
    assert isinstance(answers.exception(), RuntimeError)  # (cancelled: no rows, no error)


def test_packs_and_groups_come_out_of_the_member_stream_whole() -> None:
    settings = ClientSettings("http://127.0.0.1:1/x", static("http://127.0.0.1:1", "t"), 1, 1, 8)
    members = [Member(f"p{i}", "image/jpeg", b"x" * 10, 5, key)
               for i, key in enumerate("aabbbc")]
    grouped = CallPlan(settings, PromptSpec("p", 10), None, group_images=5,
                       max_request_bytes=4_000_000)
    assert [[m.path for m in u] for u in grouped.units(members)] == [
        ["p0", "p1"], ["p2", "p3", "p4"], ["p5"]]
    packed = CallPlan(settings, PromptSpec("p", 10), None, images_per_request=4,
                      max_request_bytes=4_000_000)
    assert [len(u) for u in packed.units(members)] == [4, 2]
    alone = CallPlan(settings, PromptSpec("p", 10), None)
    assert [len(u) for u in alone.units(members)] == [1] * 6


def test_databricks_connect_without_its_package_is_one_line(capsys, monkeypatch,
                                                            tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "databricks.connect", None)  # not installed
    assert cli.main(["run", "--spark", "databricks-connect", "--input", str(tmp_path),
                     "--table", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vision-batch: error: --spark databricks-connect needs the databricks-connect "
                   "package, in a Python 3.12 environment without pyspark: pip install "
                   "'databricks-connect>=17,<18'"]
    assert not (tmp_path / "t").exists()


def test_databricks_connect_uses_the_profiles_session(monkeypatch) -> None:
    from pipeline import spark as sessions

    made = []

    class Builder:
        def getOrCreate(self):
            made.append("session")
            return "the DatabricksSession"

    fake = types.ModuleType("databricks.connect")
    fake.DatabricksSession = types.SimpleNamespace(builder=Builder())
    monkeypatch.setitem(sys.modules, "databricks.connect", fake)
    assert sessions.get_spark(kind="databricks-connect") == "the DatabricksSession"
    assert made == ["session"]
    monkeypatch.setitem(sys.modules, "databricks.connect", None)
    with pytest.raises(sessions.SessionError, match="pip install 'databricks-connect"):
        sessions.get_spark(kind="databricks-connect")


def test_requests_of_lost_spark_tasks_are_counted_as_a_bound_apart() -> None:
    from pipeline.runs.context import RunResult

    result = RunResult("r", "t")
    ok = {"status": "ok", "attempts": 1, "latency_ms": 100}
    result.add([{**ok, "request_share": 1.0, "task_attempt": 0}] * 3
               + [{**ok, "request_share": 0.5, "task_attempt": 1}] * 4  # a retried task's
               + [{**ok, "request_share": 1.0, "task_attempt": 2}])  # ...lost twice
    assert result.requests == 3 + 2 + 1  # what the answers that arrived paid
    assert result.lost_requests == 2 + 2  # at most this much more, by the lost attempts
    summary = cli.summary(result)
    assert "and at most 4 more sent by Spark tasks lost with their executor" in summary
