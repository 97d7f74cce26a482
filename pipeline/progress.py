"""What a run says while it works: a line per batch in a terminal, and the same facts as one
JSON object per line in a Databricks job's driver log, where log tools can parse them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from pipeline.endpoint.pacing import held_back
from pipeline.outcomes import Status
from pipeline.spark import on_databricks


def counts(statuses: Mapping[str, int]) -> str:
    """Counts by status, of files or of groups, every status named: "12 ok, 0 invalid,
    1 failed"."""
    return ", ".join(f"{statuses.get(s, 0)} {s}" for s in Status)


def by_class(classes: Mapping[str, int]) -> str:
    """Counts by error class, by name: "server_error 7, timeout 3" ("" for none)."""
    return ", ".join(f"{name} {count}" for name, count in sorted(classes.items()))


@dataclass(frozen=True)
class Update:
    """One progress report: `planned` once the input is listed, `batch` after each MERGE."""

    event: str
    run_id: str
    listed: int
    skipped: int
    pending: int  # files this run will process
    batches: int
    batch: int = 0  # batches done so far
    files_done: int = 0
    statuses: Mapping[str, int] = field(default_factory=dict)  # so far, this run
    errors: Mapping[str, int] = field(default_factory=dict)  # error classes so far
    images_per_s: float = 0.0
    elapsed_s: float = 0.0
    # Seconds requests were held back by each token or query limit so far (pacing.NAMES).
    waited: Mapping[str, float] = field(default_factory=dict)
    detail: str = ""  # e.g. how groups were formed
    approximate: bool = False  # `batches` is an estimate (batches of whole groups)

    def line(self) -> str:
        about = "about " if self.approximate else ""
        if self.event == "planned":
            return (f"{self.listed} files listed, {self.skipped} already done, {self.pending} "
                    f"to process in {about}{self.batches} batch(es){self.detail} "
                    f"({self.elapsed_s:.1f} s)")
        errors = by_class(self.errors)
        held = held_back(dict(self.waited))
        return (f"batch {self.batch}/{'~' if self.approximate else ''}{self.batches}: "
                f"{self.files_done}/{self.pending} files, "
                f"{counts(self.statuses)}" + (f" ({errors})" if errors else "")
                + f"; {self.images_per_s:.1f} images/s since the start, "
                f"{self.elapsed_s:.1f} s" + (f", {held}" if held else "") + self.detail)

    __str__ = line

    def record(self) -> dict:
        return {**asdict(self), "event": f"vision_batch.{self.event}",
                "statuses": dict(self.statuses), "errors": dict(self.errors),
                "waited": dict(self.waited)}


def update(event: str, result, pending: int, batches: int, batch: int = 0, detail: str = "",
           files_done: int = 0, approximate: bool = False) -> Update:
    """An Update from a run's running totals (a pipeline.runs.RunResult)."""
    return Update(
        event=event, run_id=result.run_id, listed=result.listed, skipped=result.skipped,
        pending=pending, batches=batches, batch=batch, files_done=files_done,
        statuses={s: result.statuses[s] for s in Status},
        errors=dict(result.error_classes), images_per_s=round(result.images_per_s, 2),
        elapsed_s=round(result.seconds, 2), detail=detail, approximate=approximate,
        waited={name: round(s, 2) for name, s in result.waited.items()},
    )


def terminal(report: Update | str) -> None:
    print(str(report), flush=True)


def structured(report: Update | str) -> None:
    record = report.record() if isinstance(report, Update) else {
        "event": "vision_batch.message", "message": str(report)}
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def reporter() -> Callable[[Update | str], None]:
    """Structured lines on Databricks (job and notebook logs), readable lines elsewhere."""
    return structured if on_databricks() else terminal
