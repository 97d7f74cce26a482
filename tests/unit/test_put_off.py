"""Files whose requests were put off (refused credentials, an outage) come back in a later
batch of the same run, through the real batch loop (pipeline/runs/loop.py), with an in-memory
path and caller standing in for Spark and the endpoint."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any

from pipeline.interrupts import Stop
from pipeline.outcomes import DEFERRED, ErrorClass, Status
from pipeline.runs import loop
from pipeline.runs.context import RunResult
from pipeline.runs.plan import Batch, Entry, Plan, cut
from pipeline.runs.prepare import Prepared


class MemoryPath:
    """A path whose batches need no Spark: every file is valid; its row is its answer."""

    by_group = False

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []
        self.batches: list[list[str]] = []

    def prepare(self, batch: Batch) -> Prepared:
        self.batches.append([e.path for e in batch.entries])
        return Prepared(batch, {}, {e.path: {"path": e.path} for e in batch.entries}, None)

    def ask(self, prepared: Prepared) -> list[str]:
        return [e.path for e in prepared.batch.entries]

    def rows(self, prepared: Prepared, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in answers]

    def write(self, batches: list[Prepared], captions: list[dict[str, Any]]) -> None:
        self.written.extend(captions)

    def detail(self) -> str:
        return ""


class ScriptedCaller:
    """Answers every file, but puts off the files named in `put_off` as often as it says."""

    breaker = None

    def __init__(self, put_off: dict[str, int], stop: Stop | None = None) -> None:
        self.put_off = Counter(put_off)
        self.asked: Counter[str] = Counter()
        self.stop = stop

    def ask(self, wanted: list[str], stop: Stop) -> Future:
        rows = []
        for path in wanted:
            self.asked[path] += 1
            if self.put_off[path] > 0:
                self.put_off[path] -= 1
                rows.append({"path": path, "status": DEFERRED, "attempts": 1,
                             "error_class": ErrorClass.SERVER_ERROR,
                             "error_message": "The endpoint answered HTTP 503"})
            else:
                rows.append({"path": path, "status": Status.OK, "attempts": 1,
                             "error_class": None, "error_message": None})
        if self.stop is not None:
            self.stop.request()
        future: Future = Future()
        future.set_result(rows)
        return future

    def settle(self, deadline: float) -> None:
        return None

    def cancel(self) -> None:
        return None


class Watch:
    """Stands in for the run's Recovery: counts what the loop tells it and asks of it."""

    def __init__(self) -> None:
        self.ready_calls = 0
        self.noted: list[tuple[list[str], int]] = []
        self.lock = threading.Lock()

    def ready(self) -> None:
        self.ready_calls += 1

    def note(self, deferred, files: int) -> None:
        with self.lock:
            self.noted.append(([r["path"] for r in deferred], files))


def drive(paths: list[str], caller, batch_size: int = 3, stop: Stop | None = None):
    entries = [Entry(p, 1, 0, False) for p in paths]
    stream = cut(entries, batch_size, lambda e: e.unit)
    plan = Plan(len(paths), 0, -(-len(paths) // batch_size), stream)
    path, watch, lines = MemoryPath(), Watch(), []
    loop.drive(path, plan, caller, RunResult("r", "t"), lines.append, stop=stop,
               recovery=watch, batch_size=batch_size)  # type: ignore[arg-type]
    return path, watch, lines


def test_a_file_put_off_is_asked_again_in_a_batch_of_its_own_and_written_once() -> None:
    files = [f"f{i}" for i in range(6)]
    caller = ScriptedCaller({"f1": 1, "f4": 1})
    path, watch, lines = drive(files, caller)
    assert sorted(r["path"] for r in path.written) == files  # one row each, none lost
    assert all(r["status"] == Status.OK for r in path.written)
    assert caller.asked == Counter({**dict.fromkeys(files, 1), "f1": 2, "f4": 2})
    # The plan's two batches, then what was put off, in batches of its own (one or two, as
    # the commits fall), all numbered in order.
    assert path.batches[:2] == [["f0", "f1", "f2"], ["f3", "f4", "f5"]]
    assert sorted(f for batch in path.batches[2:] for f in batch) == ["f1", "f4"]
    assert [line.batch for line in lines] == list(range(1, len(path.batches) + 1))
    assert lines[-1].files_done == 6 and lines[-1].batches == len(path.batches)
    assert watch.ready_calls == len(path.batches)  # health looked at before every batch
    assert sorted(f for paths, _ in watch.noted for f in paths) == ["f1", "f4"]


def test_a_file_put_off_past_the_bound_is_written_as_the_failure_it_was() -> None:
    caller = ScriptedCaller({"f0": 99})
    path, _, _ = drive(["f0", "f1"], caller)
    (row,) = [r for r in path.written if r["path"] == "f0"]
    assert (row["status"], row["error_class"]) == (Status.FAILED, ErrorClass.SERVER_ERROR)
    assert caller.asked["f0"] == loop.MAX_PUT_OFF + 1  # never cycled for good
    assert len(path.written) == 2


def test_after_a_stop_a_file_put_off_gets_no_row_and_is_left_for_a_rerun() -> None:
    stop = Stop()
    caller = ScriptedCaller({"f1": 1}, stop=stop)
    path, _, _ = drive(["f0", "f1", "f2"], caller, stop=stop)
    assert sorted(r["path"] for r in path.written) == ["f0", "f2"]
    assert caller.asked["f1"] == 1
