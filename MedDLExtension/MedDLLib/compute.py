"""Where MedDL's jobs run: this computer (a local worker process) or a MedDL server (`meddl serve`).

The setting is shared by every module and the Segment Editor effect. Slicer keeps it in its application
settings (the widgets load it at start-up and save it when changed; the API key is stored there and never
logged); scripts and tests set it with `use_server` / `use_this_computer`. A job sent to a server uploads
its inputs, reports the server's progress, can be cancelled, and fetches its outputs into the same private
folder a local job writes into, so the scene changes exactly as after a local job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

from meddl.errors import MeddlError
from meddl.protocol import Request, Result

from .jobs import EngineJob, Job, JobFailed, JobState

SETTINGS_URL, SETTINGS_KEY = "MedDL/Compute/ServerURL", "MedDL/Compute/APIKey"  # Slicer settings keys


@dataclass(frozen=True)
class Compute:
    """A server URL and its API key; no URL means this computer."""

    server_url: str = ""
    api_key: str = ""

    def __repr__(self) -> str:  # the key never shows in a log or a traceback
        return f"Compute(server_url={self.server_url!r}, api_key={'***' if self.api_key else ''!r})"


_current = Compute()


def use_server(url: str, api_key: str) -> None:
    """Run the following jobs on the MedDL server at `url`."""
    global _current
    if not url.strip() or not api_key.strip():
        raise ValueError("a MedDL server needs its URL and an API key")
    _current = Compute(url.strip().rstrip("/"), api_key.strip())


def use_this_computer() -> None:
    global _current
    _current = Compute()


def current_compute() -> Compute:
    return _current


def start_engine_job(request: Request, device: Optional[str]) -> Job:
    """The job that runs `request`: on the configured server (when it can run there), else a local worker."""
    compute = current_compute()
    if compute.server_url and request.remote:
        return RemoteEngineJob(request, compute)
    return EngineJob(request, device=device)


class RemoteEngineJob(Job):
    """A request run by a MedDL server, with the interface of a local `EngineJob` (poll, cancel, finish)."""

    def __init__(self, request: Request, compute: Compute) -> None:
        from meddl.server.client import ServerClient

        self.request, self.compute = request, compute
        self.fraction, self.message, self.state = 0.0, "sending to the server", JobState.RUNNING
        self.result: Result | None = None
        self.error = ""
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._client = ServerClient(compute.server_url, compute.api_key)
        self._thread = threading.Thread(target=self._run, name="meddl-remote-job", daemon=True)
        self._thread.start()

    def _progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._events.append({"event": "progress", "fraction": fraction, "message": message})

    def _run(self) -> None:
        try:
            result = self._client.run(self.request, self._progress, self._cancel.is_set)
        except MeddlError as error:
            if not self._cancel.is_set():
                self._end(JobState.FAILED, str(error))
            return
        except Exception as error:  # a bug or an unforeseen failure: the job fails with its message
            self._end(JobState.FAILED, f"unexpected error talking to the server: {error!r}")
            return
        with self._lock:
            self.result = result
        self._end(JobState.SUCCEEDED, "done")

    def _end(self, state: JobState, message: str) -> None:
        with self._lock:
            if self.state is JobState.RUNNING:
                self.state, self.message = state, message
                self.fraction = 1.0 if state is JobState.SUCCEEDED else self.fraction
                self.error = message if state is JobState.FAILED else ""

    def poll(self) -> list[dict[str, Any]]:
        with self._lock:
            events, self._events = self._events, []
            if self.state is JobState.RUNNING:
                for event in events:
                    self.fraction, self.message = float(event["fraction"]), str(event["message"])
        return events

    def cancel(self) -> None:
        """Stop now: the server is told to cancel (in the background); the job ends as CANCELLED."""
        with self._lock:
            if self.state is JobState.RUNNING:
                self._cancel.set()
                self.state, self.message = JobState.CANCELLED, "cancelled"

    def finish(self) -> Result:
        """The typed result, its files fetched into the request's local paths; raises JobFailed otherwise."""
        if self.state is JobState.FAILED:
            raise JobFailed(self.error)
        if self.state is not JobState.SUCCEEDED or self.result is None:
            raise JobFailed(f"the job is {self.state.value}, not finished")
        return self.result
