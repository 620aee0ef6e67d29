"""Running a task over a cohort on this machine: the model loaded once, the next case read while the current
one runs, one case's failure recorded and the run going on, the summary rewritten after every case, and
`resume` skipping the cases an earlier run finished."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import MeddlError, OutputError
from ..outputs import STAGING_PREFIX
from ..progress import Progress, no_progress, report_metrics
from .cases import Case
from .summary import DONE, FAILED, SUMMARY_CSV, SUMMARY_JSON, CaseRecord, read_summary, write_summary


class CaseTask(Protocol):
    """What a batch runs for each case. A task is a picklable description (it travels to cluster workers);
    `load` builds its model in the process that runs it."""

    command: str

    def check(self, cases: list[Case]) -> None:
        """Refuse, before any work, cases this task cannot take (e.g. DICOM SEG from image files)."""

    def load(self, progress: Progress) -> None:
        """Load the model once, before the first case."""

    def read(self, case: Case) -> Any:
        """Read the case's inputs (run ahead, on a reading thread)."""

    def run(self, case: Case, data: Any, folder: Path, progress: Progress) -> tuple[list[Path], dict[str, Any]]:
        """Process one case and write its outputs whole into `folder`; returns them and the case's numbers."""

    def finish(self, records: list[CaseRecord], folder: Path) -> Path | None:
        """Write the cohort's own table (e.g. all class probabilities) from the records; None if there is none."""


@dataclass(frozen=True)
class BatchOutcome:
    """The records of every case (in case order) and the summary files."""

    records: list[CaseRecord]
    summary_json: Path
    summary_csv: Path
    table: Path | None

    def count(self, status: str) -> int:
        return sum(record.status == status for record in self.records)


def prepare_folder(folder: Path, resume: bool, source: Path | None = None, command: str | None = None,
                   settings: dict[str, Any] | None = None) -> dict[str, CaseRecord]:
    """Check the output folder (it is created with the first summary) and return an earlier run's records when
    resuming (a run of `command`). A folder that already holds files is refused, so that no result is replaced,
    unless `resume` continues the batch run whose summary is there."""
    folder = Path(folder)
    if source is not None and source.is_dir() and folder.resolve().is_relative_to(source.resolve()):
        raise OutputError(f"--out {folder} is inside the input folder {source}: give a folder outside it")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder}: a file is there; give a folder")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise OutputError(f"--out {folder}: folder {folder.parent} does not exist")
        return {}
    try:  # what a killed job left while staging is not the folder's content (the next job removes it)
        held = {path.name for path in folder.iterdir() if not path.name.startswith(STAGING_PREFIX)}
    except OSError as error:
        raise OutputError(f"--out {folder}: cannot read the folder ({error.strerror or error})") from None
    if resume and SUMMARY_JSON in held:
        return read_summary(folder, command, settings)
    if resume and held:
        raise OutputError(f"--resume: {folder} holds no {SUMMARY_JSON} of an earlier batch run, but other files; "
                          "give the earlier run's --out, or a new or empty folder")
    if held and not _only_an_empty_summary(folder, held):
        earlier = " (an earlier batch run: --resume continues it)" if SUMMARY_JSON in held else ""
        raise OutputError(f"--out {folder} is not empty{earlier}; give a new or empty folder")
    return {}


def _only_an_empty_summary(folder: Path, held: set[str]) -> bool:
    """The folder holds only the summary of a run that finished no case (e.g. its Ray workers could not load the
    model): nothing a new run would replace."""
    try:
        return held <= {SUMMARY_JSON, SUMMARY_CSV} and not read_summary(folder)
    except OutputError:
        return False


class CohortLedger:
    """A run's records, shared by the local and the Ray runner: what an earlier run finished (kept on resume), the
    cases left, the summary rewritten after each case, and the outcome at the end."""

    def __init__(self, task: CaseTask, cases: list[Case], folder: Path, resume: bool, source: Path | None) -> None:
        task.check(cases)
        self.task, self.cases, self.folder = task, cases, Path(folder)
        self.settings = task_settings(task)
        self.records = finished_records(prepare_folder(self.folder, resume, source, task.command, self.settings),
                                        cases)
        self.todo = [case for case in cases if case.id not in self.records]

    def publish(self) -> tuple[Path, Path]:
        """Write the summary (the first one creates the output folder)."""
        done = [self.records[case.id] for case in self.cases if case.id in self.records]
        return write_summary(self.folder, self.task.command, done, len(self.cases), self.settings)

    def record(self, record: CaseRecord) -> None:
        self.records[record.case] = record
        self.publish()

    def outcome(self, report: Progress) -> BatchOutcome:
        summary_json, summary_csv = self.publish()
        records = [self.records[case.id] for case in self.cases]
        table = self.task.finish(records, self.folder)
        report(1.0, f"{sum(r.status == DONE for r in records)} of {len(self.cases)} cases done")
        return BatchOutcome(records, summary_json, summary_csv, table)


def run_batch(task: CaseTask, cases: list[Case], folder: Path, resume: bool = False,
              progress: Progress | None = None, source: Path | None = None) -> BatchOutcome:
    """Run `task` on every case, writing into `folder`; a failed case is recorded and the run goes on."""
    report = progress or no_progress
    ledger = CohortLedger(task, cases, folder, resume, source)
    if ledger.todo:
        report(0.0, f"loading the model ({len(ledger.records)} of {len(cases)} cases already done)")
        task.load(report)  # a model that cannot load fails the run before the output folder is made
    ledger.publish()
    clock = CohortClock(len(ledger.todo), report)
    for case, data, error in prefetched(task.read, ledger.todo):
        ledger.record(run_case(task, case, data, error, ledger.folder, clock.case_progress(case)))
        clock.finished(ledger.records[case.id])
    return ledger.outcome(report)


def task_settings(task: CaseTask) -> dict[str, Any]:
    """What a task's results depend on (model, format, options; not the device), as JSON values: a resumed run
    must have the same."""
    values = task.options if isinstance(getattr(task, "options", None), dict) else {
        field.name: getattr(task, field.name) for field in dataclasses.fields(task) if field.init}
    kept = {name: value for name, value in values.items() if name not in ("device", "command")}
    return json.loads(json.dumps(kept, default=str))


def finished_records(earlier: dict[str, CaseRecord], cases: list[Case]) -> dict[str, CaseRecord]:
    """The earlier run's records a resumed run keeps: cases done, outputs still in place, from the same inputs. A
    case id now naming other inputs that exist (e.g. after files were added to the folder, the ids of same-named
    files shift) is run again; inputs that are gone (copies exported for that run, as Slicer's cohort job makes)
    leave the id to say which case it is."""

    def same_inputs(record: CaseRecord, case: Case) -> bool:
        earlier = [os.path.abspath(path) for path in record.inputs]
        return earlier == [os.path.abspath(path) for path in case.inputs] or not any(map(os.path.exists, earlier))

    return {case.id: earlier[case.id] for case in cases
            if case.id in earlier and earlier[case.id].is_finished() and same_inputs(earlier[case.id], case)}


def run_case(task: CaseTask, case: Case, data: Any, error: BaseException | None, folder: Path,
              progress: Progress) -> CaseRecord:
    start = time.perf_counter()
    record = CaseRecord(case.id, FAILED, list(case.inputs))
    try:
        if error is not None:
            raise error
        outputs, details = task.run(case, data, folder, progress)
        record.status, record.outputs, record.details = DONE, [str(path) for path in outputs], details
    except MeddlError as failure:
        record.message = str(failure)
    except (Exception, MemoryError) as failure:  # a bug or e.g. out of memory on one case: recorded, run goes on
        traceback.print_exc(file=sys.stderr)
        record.message = f"unexpected error: {failure!r}"
    record.seconds = time.perf_counter() - start
    return record


def prefetched(read: Callable[[Case], Any], cases: list[Case]) -> Iterator[tuple[Case, Any, BaseException | None]]:
    """(case, data, error) for each case, the next case read on a thread while the caller works on this one."""
    ahead: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def reader() -> None:
        for case in cases:
            try:
                item = (case, read(case), None)
            except Exception as error:  # handed to the main thread, which records it as the case's failure
                item = (case, None, error)
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    thread = threading.Thread(target=reader, name="meddl-batch-reader", daemon=True)
    thread.start()
    try:
        for _ in cases:
            yield ahead.get()
    finally:
        stop.set()


class CohortClock:
    """Progress over the cohort: the current case's progress scaled into its share, a message with the case's
    name and the time left (from the finished cases' mean), and a `case` event as each case ends."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.progress = total, progress
        self.finished_count, self.failed, self.started = 0, 0, time.perf_counter()

    def left(self) -> str:
        if not self.finished_count:
            return ""
        seconds = (time.perf_counter() - self.started) / self.finished_count * (self.total - self.finished_count)
        return f", about {format_duration(seconds)} left"

    def case_progress(self, case: Case) -> Progress:
        index, left = self.finished_count, self.left()

        def report(fraction: float, message: str) -> None:
            overall = (index + min(max(fraction, 0.0), 1.0)) / max(self.total, 1)
            self.progress(overall, f"case {index + 1}/{self.total} {case.id}: {message}{left}")

        return report

    def finished(self, record: CaseRecord) -> None:
        self.finished_count += 1
        self.failed += record.status == FAILED
        if record.status == FAILED:
            getattr(self.progress, "end_line", lambda: None)()
            print(f"meddl: case {record.case} failed: {record.message}", file=sys.stderr)
        report_metrics(self.progress, self.finished_count / max(self.total, 1),
                       f"{self.finished_count}/{self.total} cases ({self.failed} failed){self.left()}",
                       {"case": record.case, "status": record.status, "message": record.message,
                        "outputs": record.outputs, "seconds": round(record.seconds, 2)})


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
