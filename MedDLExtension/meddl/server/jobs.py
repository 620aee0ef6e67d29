"""The jobs of a MedDL server: its work folder, the queue, and the `meddl worker` processes that run them.

`--workers N` worker processes (`python -m meddl worker`, the process Slicer runs in the background, started
with the server's environment) each run one job at a time and keep their loaded models between jobs. Jobs
wait in one queue, in arrival order. A job's files live in its own folder, `jobs/<id>/in` (its uploads) and
`jobs/<id>/out/<field>` (what it writes); the folder goes when the job fails, is cancelled, is released by its
client, or expires. Cancelling a running job kills its worker's whole process group and starts a fresh one.

Server paths never reach a client: in events, errors and results, a path inside the job folder becomes
`file:<field>/<relative path>` (an output) or `upload:<id>...` (an input), which the client maps to its own
paths.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import meddl

from ..errors import MeddlError
from ..protocol import JOB_MARKER

log = logging.getLogger("meddl.server")

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
MAX_EVENTS = 5000  # the most recent events kept per job (a long training reports often)
MARKER = ".meddl-server"  # marks (and locks) a work folder as a MedDL server's


class TooManyJobs(MeddlError):
    """A key already has its limit of queued and running jobs (HTTP 429)."""


class WorkDirError(MeddlError):
    """The work folder cannot be used."""

    exit_code = 2


class WorkDir:
    """The server's private folder: created 0700 (or checked: a folder of this user, not a link), marked as a
    MedDL server's, locked against a second server, and emptied of a previous run's leftovers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_file = None
        self._prepare()

    def _prepare(self) -> None:
        path = self.path
        try:
            path.mkdir(mode=0o700, parents=True)
            created = True
        except FileExistsError:
            created = False
        except OSError as error:
            raise WorkDirError(f"cannot create the work folder {path}: {error.strerror}") from None
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise WorkDirError(f"the work folder {path} is a link or not a folder")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise WorkDirError(f"the work folder {path} belongs to another user")
        marker = path / MARKER
        if not created and not marker.is_file() and any(path.iterdir()):
            raise WorkDirError(f"the work folder {path} holds files that are not a MedDL server's: give an empty "
                               "or new folder (the server deletes what its work folder holds)")
        os.chmod(path, 0o700)
        self.path = path = path.resolve()  # the paths the workers report, links in its parents resolved
        descriptor = os.open(marker, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        self._lock_file = os.fdopen(descriptor, "r+")  # held open, and locked, while the server runs
        try:
            import fcntl

            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory lock
            pass
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise WorkDirError(f"another MedDL server uses the work folder {path}: give each server its own "
                               "--work-dir") from None
        self.clean()
        for name in ("uploads", "jobs", "worker"):
            (path / name).mkdir(mode=0o700)

    def clean(self) -> None:
        """Remove everything but the marker (what a killed or stopped server left)."""
        for child in self.path.iterdir():
            if child.name == MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()

    @property
    def uploads(self) -> Path:
        return self.path / "uploads"

    @property
    def jobs(self) -> Path:
        return self.path / "jobs"

    @property
    def worker_cwd(self) -> Path:
        """The workers' current folder: empty, so that a model id can never name a file there."""
        return self.path / "worker"

    def close(self, clean: bool = True) -> None:
        if clean:
            self.clean()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def worker_environment(models_dir: Optional[Path]) -> dict[str, str]:
    """The server's environment, the engine on PYTHONPATH, and the model library when --models-dir gives one."""
    environment = os.environ.copy()
    engine = str(Path(meddl.__file__).resolve().parent.parent)
    paths = [engine] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    if models_dir is not None:
        environment["MEDDL_MODELS_DIR"] = str(models_dir)
    return environment


def map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` (JSON data) with `change` applied to every string in it."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: map_strings(item, change) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(item, change) for item in value]
    return value


TEXT_SUFFIXES = (".csv", ".json", ".txt")  # small text outputs may name the job's files: their paths are hidden
MAX_TEXT_BYTES = 16 << 20


def hide_paths_in_file(path: Path, hide: Callable[[str], str]) -> None:
    """Replace the server's paths in a small text output (a CSV table of inputs, a JSON report) by the tokens the
    client maps back; JSON stays valid (its strings are changed, not its text)."""
    if not path.name.lower().endswith(TEXT_SUFFIXES) or path.stat().st_size > MAX_TEXT_BYTES:
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if path.name.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return
        changed_data = map_strings(data, hide)
        changed = text if changed_data == data else json.dumps(changed_data, indent=1)
    else:
        changed = hide(text)
    if changed != text:
        temporary = path.with_name(f".meddl-rewrite-{path.name}")
        temporary.write_text(changed, encoding="utf-8", newline="")
        os.replace(temporary, path)


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


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill a worker and everything it started (its own process group)."""
    if process.poll() is not None:
        return
    try:
        if os.name == "nt":
            try:
                import psutil

                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
            except Exception:  # psutil missing, or the process ended meanwhile
                pass
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        with contextlib.suppress(OSError):
            process.kill()


class WorkerProcess:
    """One `python -m meddl worker` and the thread that keeps the tail of what it writes on stderr."""

    def __init__(self, environment: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meddl", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1, env=environment, cwd=str(cwd),
            encoding="utf-8", errors="replace",
            **({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
               else {"start_new_session": True}))
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True, name="meddl-worker-stderr")
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            line = line.rstrip()
            with self._lock:
                if line.startswith(JOB_MARKER):
                    self._tail.clear()  # a new job: its lines are its own
                    continue
                self._tail.append(line)
            log.debug("worker %s: %s", self.process.pid, line)

    def tail(self) -> list[str]:
        self._reader.join(timeout=2)
        with self._lock:
            return list(self._tail)

    def submit(self, job: Job) -> None:
        self.process.stdin.write(json.dumps({"job": job.id, "argv": job.argv}) + "\n")
        self.process.stdin.flush()

    def events(self):
        """The worker's protocol events as they come (ends when the process does)."""
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                yield event

    def kill(self) -> None:
        _kill_tree(self.process)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()


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

    def job_count(self) -> int:
        with self._condition:
            return len(self._jobs)

    # ---- what the worker slots call

    def _next_job(self, slot: WorkerSlot) -> Optional[Job]:
        with self._condition:
            while not self._queue and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            job = self._queue.popleft()
            job.state, job.message, job.position = "running", "starting", 0
            slot.job = job
            self._update_positions()
            return job

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
        with self._condition:
            if job.state != "running":
                return
            job.result = map_strings({k: v for k, v in event.items() if k not in ("event", "job")}, job.hide_paths)
            job.files = files
            job.fraction = 1.0
            self._finish(job, "done", "done")
        shutil.rmtree(job.folder / "in", ignore_errors=True)  # the inputs are not needed any more

    def _failed(self, job: Job, kind: str, message: str, exit_code: Any) -> None:
        with self._condition:
            if job.state != "running":
                return
            code = exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else 1
            job.error = {"kind": str(kind), "message": job.hide_paths(str(message)), "exit_code": code}
            self._finish(job, "failed", job.error["message"])
        self._remove_files(job)

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
            cancelled = job.state == "cancelled"
        if cancelled:
            self._remove_files(job)


class WorkerSlot:
    """One worker process and the thread that feeds it jobs from the queue."""

    def __init__(self, service: JobService, index: int) -> None:
        self.service = service
        self.index = index
        self.job: Optional[Job] = None
        self.worker: Optional[WorkerProcess] = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"meddl-server-slot-{index}")

    def start(self) -> None:
        self._fresh_worker()
        self._thread.start()

    def _fresh_worker(self) -> None:
        with self._lock:
            if self.worker is not None:
                self.worker.close()
            self.worker = None
            if not self.service._stopping:
                self.worker = WorkerProcess(self.service.environment, self.service.work.worker_cwd)

    def interrupt(self) -> None:
        """Kill the worker (its job was cancelled, or the server stops): the slot sees it end, cleans up and starts
        a fresh one."""
        with self._lock:
            if self.worker is not None:
                self.worker.kill()

    def stop(self) -> None:
        self.interrupt()
        self._thread.join(timeout=15)
        with self._lock:
            if self.worker is not None:
                self.worker.close()
                self.worker = None

    def _run(self) -> None:
        service = self.service
        while True:
            job = service._next_job(self)
            if job is None:
                return
            try:
                self._run_job(job)
            except Exception as error:  # a bug here must not stop the slot: the job fails, the slot goes on
                log.exception("worker slot %s: job failed unexpectedly", self.index)
                service._failed(job, "InternalError", f"the server failed to run the job: {error!r}", 1)
            finally:
                service._slot_finished(self, job)
            if not (self.worker and self.worker.alive()):
                self._fresh_worker()

    def _run_job(self, job: Job) -> None:
        service = self.service
        worker = self.worker
        if worker is None or not worker.alive():
            self._fresh_worker()
            worker = self.worker
        if worker is None or job.state != "running":  # stopping, or cancelled meanwhile
            return
        try:
            worker.submit(job)
        except (OSError, ValueError):  # it died before the job reached it: one fresh try
            self._fresh_worker()
            worker = self.worker
            if worker is None:
                return
            worker.submit(job)
        for event in worker.events():
            if event.get("job") != job.id:
                continue  # "ready", or a stray line
            kind = event["event"]
            if kind == "progress":
                service._progress(job, event)
            elif kind == "done":
                service._done(job, event)
                return
            elif kind == "error":
                service._failed(job, event.get("kind", "MeddlError"), event.get("message", "unknown error"),
                                event.get("exit_code", 1))
                return
            if job.state != "running":
                break  # cancelled
        # the worker's output ended: it was killed (cancel) or it died
        worker.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=10)
        if job.state == "running":
            tail = "\n".join(worker.tail())[-2000:]
            service._failed(job, "InternalError", f"the server's worker process ended unexpectedly (exit code "
                            f"{worker.process.returncode})" + (f":\n{tail}" if tail else ""), 1)
        self._fresh_worker()
