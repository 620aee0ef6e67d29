"""Background engine jobs on a long-lived worker process (`python -m meddl worker`).

The worker keeps torch imported and recently used models loaded, so a second Apply starts at
once. Jobs run one at a time on a worker; a job that finds its worker busy gets a fresh one.
Progress comes back as JSON lines. Cancel kills the worker's whole process tree (the next job
starts a new worker); a crash or out-of-memory in the worker fails the job and cannot take
Slicer down. The caller polls (a qt.QTimer in the widget) or waits (scripts and tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from enum import Enum
from pathlib import Path
from typing import Any

import meddl
from meddl.protocol import JOB_MARKER, Request, Result

POLL_SECONDS = 0.02


class JobState(Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobFailed(RuntimeError):
    """The worker reported an error or exited abnormally; the message is the worker's."""


PYTHON_SLICER = ("PythonSlicer", "PythonSlicer.exe")


def inside_slicer() -> bool:
    """True when this process is not a plain Python interpreter: the Slicer application (SlicerApp-real)
    or Slicer's own Python (python-real, started by the PythonSlicer launcher)."""
    name = Path(sys.executable or "").name.lower()
    return not name.startswith("python") or name.startswith("python-real") or "slicer" in name


def python_executable() -> str:
    """The interpreter that runs the worker: this one outside Slicer; inside Slicer, Slicer's PythonSlicer
    launcher (it sets the library paths Slicer's Python needs), found on the PATH that the application
    sets, then beside the running executable. Never a guess: without it the job fails with a clear message."""
    if not inside_slicer():
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    for name in PYTHON_SLICER:
        beside = Path(sys.executable or ".").parent / name
        if beside.is_file():
            return str(beside)
    raise JobFailed(f"cannot find Slicer's Python launcher (PythonSlicer) on the PATH or beside {sys.executable!r}, "
                    "so MedDL cannot start its background process; reinstall Slicer or start it from its own "
                    "launcher")


def engine_environment(device: str | None = None) -> dict[str, str]:
    """Environment for the worker: the engine on PYTHONPATH, CUDA hidden when CPU is asked for."""
    environment = os.environ.copy()
    engine_folder = str(Path(meddl.__file__).resolve().parent.parent)
    paths = [engine_folder] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = "-1"
    return environment


class EngineWorker:
    """One `python -m meddl worker` process and the threads that read its output."""

    def __init__(self, device: str | None = None) -> None:
        self.key = _worker_key(device)
        self.events: queue.Queue = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=40)  # the last lines, whichever job wrote them
        self._stderr_by_job: dict[str | None, deque[str]] = {None: deque(maxlen=40)}  # None: before any job
        self._stderr_lock = threading.Lock()
        self.process = subprocess.Popen(
            [python_executable(), "-m", "meddl", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1, env=engine_environment(device), **_new_process_group())
        self._readers = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # anything a library prints is not part of the protocol
            if isinstance(event, dict) and "event" in event:
                self.events.put(event)

    def _read_stderr(self) -> None:
        current = self._stderr_by_job[None]
        for line in self.process.stderr:
            line = line.rstrip()
            with self._stderr_lock:
                if line.startswith(JOB_MARKER):  # the worker starts the next job: its lines are its own
                    current = self._stderr_by_job[line[len(JOB_MARKER):]] = deque(maxlen=40)
                    while len(self._stderr_by_job) > 4:  # a few jobs, and the worker's start
                        del self._stderr_by_job[next(key for key in self._stderr_by_job if key is not None)]
                    continue
                self.stderr_tail.append(line)
                current.append(line)

    def stderr_of(self, job: str) -> list[str]:
        """What the worker wrote on stderr while it ran `job` (before the job started: the worker's start-up)."""
        with self._stderr_lock:
            lines = self._stderr_by_job.get(job)
            return list(self._stderr_by_job[None] if lines is None else lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def submit(self, job: str, argv: list[str]) -> None:
        self.process.stdin.write(json.dumps({"job": job, "argv": argv}) + "\n")
        self.process.stdin.flush()

    def drain(self) -> list[dict[str, Any]]:
        """Events received so far; after the process ended, everything it wrote."""
        if not self.alive():
            for reader in self._readers:
                reader.join(timeout=5)
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    def kill(self) -> None:
        if self.alive():
            _kill_tree(self.process)
        self.process.wait()

    def close(self) -> None:
        """Let the worker finish: end of input makes it exit."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()


_idle_workers: dict[tuple, EngineWorker] = {}


def _worker_key(device: str | None) -> tuple:
    """Workers are shared only between jobs with the same device setting and MedDL settings."""
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("MEDDL_")))
    return ("cpu" if device == "cpu" else "default", settings)


def acquire_worker(device: str | None) -> EngineWorker:
    """An idle, live worker for this device setting, or a new one."""
    key = _worker_key(device)
    worker = _idle_workers.pop(key, None)
    if worker is None or not worker.alive():
        worker = EngineWorker(device)
    return worker


def release_worker(worker: EngineWorker) -> None:
    """Keep a live worker for the next job (one per device and settings); close any extra."""
    key = worker.key
    if worker.alive() and key not in _idle_workers:
        _idle_workers[key] = worker
    elif _idle_workers.get(key) is not worker:
        worker.close()


def shut_down_workers() -> None:
    """End every idle worker (on module cleanup or application exit)."""
    while _idle_workers:
        _idle_workers.popitem()[1].close()


class Job(ABC):
    """What every MedDL background job offers the widget's job runner, scripts and tests.

    `poll()` takes in what the worker reported (call it from a timer), `fraction` and `message` say how
    far it is, `state` whether it ended, `cancel()` stops it, and `finish()` returns what it made (for a
    scene-facing job, after changing the scene) or raises JobFailed with the worker's message.
    """

    state: JobState
    fraction: float
    message: str
    cancelled_message = "Cancelled; nothing was changed."

    @abstractmethod
    def poll(self) -> list[dict[str, Any]]:
        """Events received since the last poll."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop now; the job ends as CANCELLED."""

    @abstractmethod
    def finish(self) -> Any:
        """The job's product once it succeeded; raises JobFailed otherwise."""

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job ends (or `timeout` seconds pass), polling; returns the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.poll()
        while self.state is JobState.RUNNING and (deadline is None or time.monotonic() < deadline):
            time.sleep(POLL_SECONDS)
            self.poll()
        return self.state


class EngineJob(Job):
    """One typed worker request (`meddl.protocol.Request`) run on a worker with JSON-lines progress."""

    def __init__(self, request: Request, device: str | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.request = request
        self.fraction = 0.0
        self.message = "starting"
        self.state = JobState.RUNNING
        self.result: Result | None = None
        self.error = ""
        arguments = request.argv()  # a request that cannot be built takes no worker
        self.worker = acquire_worker(device)
        self.process = self.worker.process
        self.worker.submit(self.id, arguments)

    def poll(self) -> list[dict[str, Any]]:
        """Events received since the last poll; updates fraction, message and state."""
        if self.state is not JobState.RUNNING:
            return []
        ended = not self.worker.alive()
        events = [e for e in self.worker.drain() if e.get("job") in (self.id, None)]
        for event in events:
            self._apply(event)
        if self.state is JobState.RUNNING and ended:
            tail = "\n".join(self.worker.stderr_of(self.id))[-2000:]
            self._end(JobState.FAILED, f"the worker process exited with code {self.process.returncode}"
                      + (f":\n{tail}" if tail else ""))
        return events

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "progress":
            self.fraction, self.message = float(event.get("fraction", 0.0)), str(event.get("message", ""))
        elif kind == "done":
            try:
                self.result = self.request.read_result(event)
            except (TypeError, ValueError) as error:  # a worker of another MedDL version, say
                self._end(JobState.FAILED, f"the worker's result could not be read: {error}")
                return
            self.fraction = 1.0
            self._end(JobState.SUCCEEDED, "done")
        elif kind == "error" and event.get("job") == self.id:
            self._end(JobState.FAILED, str(event.get("message", "unknown error")))

    def _end(self, state: JobState, message: str) -> None:
        self.state, self.message = state, message
        if state is JobState.FAILED:
            self.error = message
        release_worker(self.worker)

    def cancel(self) -> None:
        """Stop the job now by killing its worker; the job ends as CANCELLED."""
        if self.state is JobState.RUNNING:
            self.worker.kill()
            self.state, self.message = JobState.CANCELLED, "cancelled"

    def finish(self) -> Result:
        """The typed result of the request; raises JobFailed unless the job succeeded."""
        self.poll()
        if self.state is JobState.FAILED:
            raise JobFailed(self.error)
        if self.state is not JobState.SUCCEEDED or self.result is None:
            raise JobFailed(f"the job is {self.state.value}, not finished")
        return self.result


def finish_within(job: Job, timeout: float | None, what: str):
    """Wait for a job (scripts, tests, the console) and return `job.finish()`; cancel it past `timeout`."""
    if job.wait(timeout) is JobState.RUNNING:
        job.cancel()
        raise TimeoutError(f"{what} did not finish in {timeout} s")
    return job.finish()


def _new_process_group() -> dict[str, Any]:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill_tree(process: subprocess.Popen) -> None:
    try:
        import psutil

        parent = psutil.Process(process.pid)
        for child in parent.children(recursive=True):
            child.kill()
        parent.kill()
    except ImportError:
        if os.name == "nt":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
    except Exception:  # the process may end on its own between the check and the kill
        process.kill()


class FolderJob(Job):
    """A job that exchanges files with the worker through a private folder, removed in every outcome.

    A subclass writes its inputs into `self.folder` (cleaning up if that fails), starts its request with
    `_start()`, and implements `_apply(result)`, which changes the scene; `finish()` calls it only after
    the job succeeded.
    """

    engine: Job

    def __init__(self, prefix: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))

    def _start(self, request: Request, device: str | None, session=None) -> None:
        """Run `request` on a worker (or the MedDL server chosen in the Compute setting, in its interactive
        `session` when given); if it cannot start, the exported inputs are removed at once."""
        from .compute import start_engine_job  # compute builds on this module's jobs

        try:
            self.engine = start_engine_job(request, device, session)
        except BaseException:
            self.clean_up()
            raise

    @property
    def state(self) -> JobState:
        return self.engine.state

    @property
    def fraction(self) -> float:
        return self.engine.fraction

    @property
    def message(self) -> str:
        return self.engine.message

    def poll(self) -> list[dict[str, Any]]:
        return self.engine.poll()

    def cancel(self) -> None:
        self.engine.cancel()
        self.clean_up()

    def finish(self):
        """Apply a succeeded job to the scene and return what it made; raises JobFailed otherwise."""
        try:
            self.poll()  # through the subclass, which may act on the last events
            return self._apply(self.engine.finish())
        finally:
            self.clean_up()

    @abstractmethod
    def _apply(self, result: Result):
        """Change the scene from the worker's result; returns what the job made."""

    def clean_up(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
