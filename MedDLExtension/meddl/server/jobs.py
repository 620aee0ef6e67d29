"""The jobs of a MedDL server: every job's state, the queue they wait in, and their files' end.

Jobs wait in one queue, in arrival order, for a worker slot (`worker`). A job of an interactive session
(`sessions`) runs on its session's slot, before the slot's other jobs; a slot that keeps sessions leaves jobs
without one to the slots that keep none, when there are such slots (with one worker it runs everything). When a
session ends, its slot tells its worker to forget it before taking its next job.

A job's files live in its own folder, `jobs/<id>/in` (its uploads) and `jobs/<id>/out/<field>` (what it writes);
the folder goes when the job fails, is cancelled, is released by its client, or expires.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import MeddlError
from .hiding import hide_paths_in_file, map_strings
from .workdir import WorkDir
from .worker import WorkerSlot, worker_environment

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
MAX_EVENTS = 5000  # the most recent events kept per job (a long training reports often)


class TooManyJobs(MeddlError):
    """A key already has its limit of queued and running jobs (HTTP 429)."""


@dataclass
class Job:
    """One client request on its way through the server."""

    id: str
    owner: str
    request: str
    argv: list[str]
    folder: Path
    replacements: list[tuple[str, str]]  # server path prefix -> what the client sees, longest first
    state: str = "queued"
    fraction: float = 0.0
    message: str = "queued"
    error: Optional[dict[str, Any]] = None
    result: Optional[dict[str, Any]] = None
    files: list[str] = field(default_factory=list)
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_EVENTS))
    event_count: int = 0
    position: int = 0
    finished: Optional[float] = None
    released: bool = False
    cleaned: threading.Event = field(default_factory=threading.Event)
    session: Optional[str] = None  # the interactive session it belongs to
    slot: Optional[int] = None  # the worker slot it must run on (its session's)
    release_files: list[str] = field(default_factory=list)  # its worker forgets the session of these after it

    def hide_paths(self, text: str) -> str:
        for prefix, token in self.replacements:
            text = text.replace(prefix, token)
        return text

    def add_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.event_count += 1

    def status(self) -> dict[str, Any]:
        status = {"job": self.id, "state": self.state, "position": self.position if self.state == "queued" else 0,
                  "fraction": self.fraction, "message": self.message}
        if self.error is not None:
            status["error"] = self.error
        return status


class JobService:
    """The queue, the worker slots, and every job's state; thread-safe (the web server calls it from many)."""

    def __init__(self, work: WorkDir, workers: int = 1, max_jobs_per_key: int = 4, ttl_s: float = 3600.0,
                 environment: Optional[dict[str, str]] = None) -> None:
        self.work = work
        self.max_jobs_per_key = max_jobs_per_key
        self.ttl_s = ttl_s
        self.environment = environment or worker_environment(None)
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._slots = [WorkerSlot(self, index) for index in range(max(1, workers))]
        self._sessions_per_slot = [0] * len(self._slots)

    # ---- life cycle

    def start(self) -> None:
        for slot in self._slots:
            slot.start()

    def stop(self) -> None:
        """Cancel every queued and running job and end the workers (the work folder is cleaned after)."""
        with self._condition:
            self._stopping = True
            self._queue.clear()
            for job in self._jobs.values():
                if job.state in ACTIVE:
                    self._finish(job, "cancelled", "the server stopped")
            self._condition.notify_all()
        for slot in self._slots:
            slot.stop()

    # ---- what the web server calls

    def submit(self, job: Job) -> int:
        """Queue a job whose folder is ready; its position when queued (1: next). TooManyJobs past the key's
        limit."""
        with self._condition:
            if self._stopping:
                raise MeddlError("the server is stopping")
            active = sum(1 for other in self._jobs.values() if other.owner == job.owner and other.state in ACTIVE)
            if active >= self.max_jobs_per_key:
                raise TooManyJobs(f"this key already has {active} jobs queued or running, the server's limit per "
                                  "key: wait for one to finish")
            self._jobs[job.id] = job
            self._queue.append(job)
            self._update_positions()
            self._condition.notify_all()
            return job.position

    def active_jobs(self, owner: str) -> int:
        with self._condition:
            return sum(1 for job in self._jobs.values() if job.owner == owner and job.state in ACTIVE)

    def get(self, owner: str, job_id: str) -> Optional[Job]:
        """The job, if it is this key's (others' jobs do not exist for it)."""
        with self._condition:
            job = self._jobs.get(job_id)
            return job if job is not None and job.owner == owner else None

    def status(self, job: Job) -> dict[str, Any]:
        with self._condition:
            return job.status()

    def events_after(self, job: Job, after: int) -> tuple[list[dict[str, Any]], int, str]:
        """Events numbered `after`.. (the oldest are dropped past MAX_EVENTS), the next number, the state."""
        with self._condition:
            first = job.event_count - len(job.events)
            start = max(after, first)
            events = list(job.events)[start - first:] if start < job.event_count else []
            return events, job.event_count, job.state

    def cancel(self, owner: str, job_id: str, timeout: float = 30.0) -> Optional[str]:
        """Cancel a queued or running job and remove its files (a finished job's files are removed); its state
        after, or None when the key has no such job. Returns when the files are gone."""
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None or job.owner != owner:
                return None
            slot = None
            if job.state == "queued":
                self._queue.remove(job)
                self._finish(job, "cancelled", "cancelled")
                self._update_positions()
            elif job.state == "running":
                slot = next((s for s in self._slots if s.job is job), None)
                self._finish(job, "cancelled", "cancelled")
                if slot is not None:
                    slot.interrupt()  # under the lock: the slot cannot have moved on to another job
            job.released = True
        if slot is not None:
            job.cleaned.wait(timeout)
        else:
            self._remove_files(job)
        return job.state

    def release(self, owner: str, job_id: str) -> Optional[str]:
        """Remove a finished job's files (its client has them); None when the key has no such job."""
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None or job.owner != owner:
                return None
            if job.state in ACTIVE:
                return job.state
            job.released = True
            job.files = []
        self._remove_files(job)
        return job.state

    def expire(self, now: Optional[float] = None) -> int:
        """Forget finished jobs older than the time to live, with their files; returns how many."""
        now = time.monotonic() if now is None else now
        with self._condition:
            old = [job for job in self._jobs.values()
                   if job.state in FINISHED and job.finished is not None and now - job.finished > self.ttl_s]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            self._remove_files(job)
        return len(old)

    # ---- interactive sessions (`sessions`)

    def assign_slot(self) -> int:
        """The worker slot for a new session: the one keeping the fewest sessions."""
        with self._condition:
            index = min(range(len(self._slots)), key=self._sessions_per_slot.__getitem__)
            self._sessions_per_slot[index] += 1
            self._condition.notify_all()  # which slots take jobs of no session changed
            return index

    def free_session(self, index: int, files: list[str]) -> None:
        """A session of slot `index` ended: its worker forgets the session of `files` before its next job."""
        with self._condition:
            self._sessions_per_slot[index] -= 1
            self._slots[index].releases += files
            self._condition.notify_all()

    def session_activity(self, session_id: str) -> tuple[bool, Optional[float]]:
        """Whether a job of the session is queued or running, and when the last of its jobs ended."""
        with self._condition:
            jobs = [job for job in self._jobs.values() if job.session == session_id]
            ended = [job.finished for job in jobs if job.finished is not None]
            return any(job.state in ACTIVE for job in jobs), max(ended, default=None)

    def sessions_released(self) -> int:
        """How many sessions the workers said they forgot since the server started."""
        return sum(slot.released for slot in self._slots)

    def cancel_session(self, owner: str, session_id: str) -> None:
        """Cancel the queued and running jobs of a session (it is being closed)."""
        with self._condition:
            active = [job.id for job in self._jobs.values() if job.session == session_id and job.state in ACTIVE]
        for job_id in active:
            self.cancel(owner, job_id)

    # ---- what the worker slots call

    def _next_work(self, slot: WorkerSlot) -> Union[Job, list[str], None]:
        """The slot's next work: the files of ended sessions its worker must forget, else its next job; None when
        the server stops."""
        with self._condition:
            while not self._stopping:
                if slot.releases:
                    files, slot.releases = slot.releases, []
                    return files
                job = self._pick(slot)
                if job is not None:
                    self._queue.remove(job)
                    job.state, job.message, job.position = "running", "starting", 0
                    slot.job = job
                    self._update_positions()
                    return job
                self._condition.wait()
            return None

    def _pick(self, slot: WorkerSlot) -> Optional[Job]:
        """Under the lock: the first job of a session this slot keeps; else the first job of no slot, unless this
        slot keeps sessions and another keeps none (that one takes it, and this one stays free for its sessions)."""
        pinned = next((job for job in self._queue if job.slot == slot.index), None)
        if pinned is not None:
            return pinned
        if self._sessions_per_slot[slot.index] and min(self._sessions_per_slot) == 0:
            return None
        return next((job for job in self._queue if job.slot is None), None)

    def _progress(self, job: Job, event: dict[str, Any]) -> None:
        with self._condition:
            if job.state != "running":
                return
            event = map_strings({k: v for k, v in event.items() if k != "job"}, job.hide_paths)
            with contextlib.suppress(TypeError, ValueError):
                job.fraction = min(max(float(event.get("fraction", job.fraction)), 0.0), 1.0)
            job.message = str(event.get("message", job.message))
            job.add_event(event)

    def _done(self, job: Job, event: dict[str, Any]) -> None:
        files = self._output_files(job)
        for relative in files:
            hide_paths_in_file(job.folder / "out" / relative, job.hide_paths)
        shutil.rmtree(job.folder / "in", ignore_errors=True)  # not needed any more; gone before "done" is seen
        with self._condition:
            if job.state != "running":
                return
            job.result = map_strings({k: v for k, v in event.items() if k not in ("event", "job")}, job.hide_paths)
            job.files = files
            job.fraction = 1.0
            self._finish(job, "done", "done")

    def _failed(self, job: Job, kind: str, message: str, exit_code: Any) -> None:
        with self._condition:
            if job.state != "running":
                return
        self._remove_files(job)  # before the state is published: a client that sees "failed" finds nothing left
        with self._condition:
            if job.state != "running":
                return
            code = exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else 1
            job.error = {"kind": str(kind), "message": job.hide_paths(str(message)), "exit_code": code}
            self._finish(job, "failed", job.error["message"])

    def _output_files(self, job: Job) -> list[str]:
        """Every regular file under the job's out folder, as `<field>/<relative path>` (links are not followed)."""
        out = job.folder / "out"
        found = []
        for folder, folders, names in os.walk(out):
            folders[:] = sorted(f for f in folders if not f.startswith(".meddl-"))
            for name in sorted(names):
                path = Path(folder) / name
                if stat.S_ISREG(os.lstat(path).st_mode):
                    found.append(path.relative_to(out).as_posix())
        return found

    # ---- inside

    def _finish(self, job: Job, state: str, message: str) -> None:
        """Under the lock: the job ends in `state`."""
        job.state, job.message, job.position = state, message, 0
        job.finished = time.monotonic()
        job.add_event({"event": "state", "state": state})
        self._condition.notify_all()

    def _update_positions(self) -> None:
        """Under the lock: each queued job's place, with an event for those that moved."""
        for place, job in enumerate(self._queue, 1):
            if job.position != place:
                job.position = place
                ahead = "no job" if place == 1 else f"{place - 1} job{'s' if place > 2 else ''}"
                job.message = f"queued: {ahead} ahead"
                job.add_event({"event": "queued", "position": place, "fraction": 0.0, "message": job.message})

    def _remove_files(self, job: Job) -> None:
        shutil.rmtree(job.folder, ignore_errors=True)
        job.cleaned.set()

    def _slot_finished(self, slot: WorkerSlot, job: Job) -> None:
        with self._condition:
            slot.job = None
            slot.releases += job.release_files
            cancelled = job.state == "cancelled"
        if cancelled:
            self._remove_files(job)
