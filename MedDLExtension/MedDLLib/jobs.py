"""Background engine jobs: `python -m meddl ...` in its own process, JSON-lines progress, cancel.

A crash or out-of-memory in the worker cannot take Slicer down, and cancelling kills the whole
process tree. The caller polls (a qt.QTimer in the widget) or waits (scripts and tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from enum import Enum
from pathlib import Path
from typing import Any

import meddl


class JobState(Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobFailed(RuntimeError):
    """The worker reported an error or exited abnormally; the message is the worker's."""


def python_executable() -> str:
    """Slicer's PythonSlicer launcher when inside Slicer, else this interpreter."""
    folder = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (folder / name).is_file():
            return str(folder / name)
    return sys.executable


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


class EngineJob:
    """One worker process running a `meddl` command with `--progress json`."""

    def __init__(self, arguments: list[str], device: str | None = None, cwd: str | Path | None = None) -> None:
        command = [python_executable(), "-m", "meddl", *arguments, "--progress", "json"]
        self.fraction = 0.0
        self.message = "starting"
        self.state = JobState.RUNNING
        self.result: dict[str, Any] = {}
        self.error = ""
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=40)
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            bufsize=1, cwd=cwd, env=engine_environment(device), **_new_process_group())
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
                self._events.put(event)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr_tail.append(line.rstrip())

    def poll(self) -> list[dict[str, Any]]:
        """Events received since the last poll; updates fraction, message and state."""
        events = []
        finished = self.process.poll() is not None
        if finished:
            for reader in self._readers:
                reader.join(timeout=5)
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        for event in events:
            self._apply(event)
        if finished and self.state is JobState.RUNNING:
            self._finish(self.process.returncode)
        return events

    def _apply(self, event: dict[str, Any]) -> None:
        if event["event"] == "progress":
            self.fraction, self.message = float(event.get("fraction", 0.0)), str(event.get("message", ""))
        elif event["event"] == "done":
            self.result = event
        elif event["event"] == "error":
            self.error = str(event.get("message", "unknown error"))

    def _finish(self, returncode: int) -> None:
        if self.state is JobState.CANCELLED:
            return
        if returncode == 0 and self.result:
            self.state, self.fraction, self.message = JobState.SUCCEEDED, 1.0, "done"
            return
        self.state = JobState.FAILED
        if not self.error:
            tail = "\n".join(self._stderr_tail)[-2000:]
            self.error = f"the worker process exited with code {returncode}" + (f":\n{tail}" if tail else "")
        self.message = self.error

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the worker ends (or `timeout` seconds pass) and return the state."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self.poll()
        return self.state

    def cancel(self) -> None:
        """Kill the worker and everything it started; the job ends as CANCELLED."""
        if self.process.poll() is None:
            self.state = JobState.CANCELLED
            _kill_tree(self.process)
            self.process.wait()
        self.poll()
        self.message = "cancelled"


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
