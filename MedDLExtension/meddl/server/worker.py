"""The `meddl worker` processes that run a server's jobs, and the slots that feed them.

`--workers N` worker processes (`python -m meddl worker`, the process Slicer runs in the background, started
with the server's environment) each run one job at a time and keep their loaded models, and the interactive
sessions of the jobs they ran, between jobs. Cancelling a running job kills its worker's whole process group and
its slot starts a fresh one (whose sessions, empty, replay their prompts at their next job).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import meddl

from ..protocol import JOB_MARKER

if TYPE_CHECKING:
    from .jobs import Job, JobService

log = logging.getLogger("meddl.server")


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
        self.send({"job": job.id, "argv": job.argv})

    def send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
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


class WorkerSlot:
    """One worker process and the thread that feeds it jobs from the queue."""

    def __init__(self, service: JobService, index: int) -> None:
        self.service = service
        self.index = index
        self.job: Optional[Job] = None
        self.worker: Optional[WorkerProcess] = None
        self.releases: list[str] = []  # files of ended sessions its worker must forget (under the service's lock)
        self.released = 0  # sessions its worker said it forgot
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
            work = service._next_work(self)
            if work is None:
                return
            if isinstance(work, list):
                self._release(work)
            else:
                self._serve(work)
            if not (self.worker and self.worker.alive()):
                self._fresh_worker()

    def _serve(self, job: Job) -> None:
        try:
            self._run_job(job)
        except Exception as error:  # a bug here must not stop the slot: the job fails, the slot goes on
            log.exception("worker slot %s: job failed unexpectedly", self.index)
            self.service._failed(job, "InternalError", f"the server failed to run the job: {error!r}", 1)
        finally:
            self.service._slot_finished(self, job)

    def _release(self, files: list[str]) -> None:
        """Tell the worker to forget the sessions of `files` (a worker that died forgot them already)."""
        worker = self.worker
        if worker is None or not worker.alive():
            return
        tag = f"release-{secrets.token_hex(8)}"
        try:
            worker.send({"job": tag, "release": files})
        except (OSError, ValueError):
            return
        for event in worker.events():
            if event.get("job") == tag:
                if event["event"] == "done" and isinstance(event.get("released"), int):
                    self.released += event["released"]
                return

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
