"""A batch run's record of every case (summary.json and summary.csv in the output folder), rewritten whole after
each case, so that a killed run leaves an up-to-date summary and `--resume` knows what is done."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..outputs import STAGING_PREFIX

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
DONE, FAILED = "done", "failed"


@dataclass
class CaseRecord:
    """One case's outcome: its status, inputs, the outputs written, the time it took, the error message of a
    failed case, and the task's numbers (volumes in mL, class probabilities, ...) as flat columns."""

    case: str
    status: str
    inputs: list[str]
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def is_finished(self) -> bool:
        """Done, with every output still in place (a resumed run skips it)."""
        return self.status == DONE and all(Path(path).exists() for path in self.outputs)


def write_text_whole(path: Path, text: str) -> None:
    """Write `path` through a temporary file in its folder and an atomic rename: readers see the old or the
    new content, never a part."""
    # named as OutputSet's staging (with this process's id), so that the next job removes what a killed one left
    handle, temporary = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            os.chmod(temporary, 0o666 & ~current_umask())  # as any file written (mkstemp makes it private)
            stream.write(text)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None


@functools.cache
def current_umask() -> int:
    """The process's umask (read once: reading it means setting it for a moment)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_summary(folder: Path, command: str, records: list[CaseRecord], total: int,
                  settings: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """summary.json (the run and every case) and summary.csv (one row per case), each written whole; the first
    summary creates the output folder."""
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {folder}: {error.strerror}") from None
    counts = {status: sum(record.status == status for record in records) for status in (DONE, FAILED)}
    report = {"command": command, "settings": settings or {}, "cases": total, **counts,
              "records": [asdict(record) for record in records]}
    write_text_whole(folder / SUMMARY_JSON, json.dumps(report, indent=1))
    write_text_whole(folder / SUMMARY_CSV, _csv_text(records))
    return folder / SUMMARY_JSON, folder / SUMMARY_CSV


def _csv_text(records: list[CaseRecord]) -> str:
    return table_text([{"case": record.case, "status": record.status, "seconds": round(record.seconds, 2),
                        "message": record.message, "inputs": ";".join(record.inputs),
                        "outputs": ";".join(record.outputs), **record.details} for record in records])


def table_text(rows: list[dict[str, Any]]) -> str:
    """CSV text of dictionaries: the columns of all rows in first-seen order, blank where a row lacks one."""
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def read_summary(folder: Path, command: str | None = None,
                 settings: dict[str, Any] | None = None) -> dict[str, CaseRecord]:
    """The records of an earlier run in `folder` by case id (none when it has no summary); with `command`, a
    summary of another command's run is refused (its outputs are not this command's, and may share names), and
    with `settings`, one of a run with other settings (another model, format, ...: results would be mixed)."""
    path = folder / SUMMARY_JSON
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        records = [CaseRecord(**record) for record in report["records"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise OutputError(f"cannot resume from {path}: it is not a MedDL batch summary ({error})") from None
    if command is not None and report.get("command") != command:
        raise OutputError(f"cannot resume from {path}: it is the summary of a 'meddl {report.get('command')} "
                          f"--batch' run, not of 'meddl {command} --batch'; give another --out")
    earlier = report.get("settings") or {}
    changed = sorted(name for name in {*earlier, *(settings or {})} if settings is not None
                     and earlier.get(name) != settings.get(name))
    if changed:
        described = ", ".join(f"{name} {earlier.get(name)!r} then, {settings.get(name)!r} now" for name in changed)
        raise OutputError(f"cannot resume from {path}: the earlier run had other settings ({described}); resume "
                          "with the same settings, or give another --out")
    return {record.case: record for record in records}
