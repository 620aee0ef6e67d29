"""Where MedDL's jobs run: this computer (a local worker process) or a MedDL server (`meddl serve`).

The setting is shared by every module and the Segment Editor effect. Slicer keeps it in its application
settings (the widgets load it at start-up and save it when changed; the API key is stored there and never
logged); scripts and tests set it with `use_server` / `use_this_computer`. A job sent to a server uploads
its inputs, reports the server's progress, can be cancelled, and fetches its outputs into the same private
folder a local job writes into, so the scene changes exactly as after a local job.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from meddl.errors import MeddlError
from meddl.library.overview import ModelRow, filter_rows
from meddl.protocol import Request, Result
from meddl.server.client import ServerClient
from meddl.server.interactive import KeptSession
from meddl.server.transport import is_loopback

from .jobs import EngineJob, Job, JobFailed, JobState
from .model_library import library_rows

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


# ---- the saved setting (Slicer's settings, or any object with .value(key) and .setValue(key, value))

class Settings(Protocol):
    def value(self, key: str) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...


def check_server_url(url: str) -> tuple[str, list[str]]:
    """The server address as it is stored (no trailing slash) and warnings about it; ValueError if it is not one:
    http or https, a host, no user name, password, query or fragment (the API key has its own field)."""
    text = str(url or "").strip()
    example = "an address such as https://gpu-box:8765"
    if not text:
        raise ValueError(f"enter the MedDL server's address ({example})")
    if any(ch.isspace() for ch in text) or not text.isprintable():
        raise ValueError(f"the server address holds spaces or control characters: enter {example}")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"the server address must start with https:// or http:// ({example})")
    if not parts.hostname:
        raise ValueError(f"the server address names no host ({example})")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the server address holds a user name or password: remove it (the API key has its own "
                         "field)")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"the server address holds a query or fragment (?... or #...): enter {example}")
    try:
        parts.port  # noqa: B018 (urllib checks the port only when asked)
    except ValueError:
        raise ValueError(f"the server address has an invalid port ({example})") from None
    stored = f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"
    found = []
    if parts.scheme.lower() == "http" and not is_loopback(parts.hostname):
        found.append(f"{stored}: the API key and the images travel unencrypted to another computer (use https)")
    return stored, found


def check_api_key(api_key: str) -> str:
    """The key as it is stored; ValueError (never quoting it) if it is empty or not a single printable word."""
    key = str(api_key or "").strip()
    if not key:
        raise ValueError("enter the API key the server's administrator gave you")
    if any(ch.isspace() for ch in key) or not key.isprintable():
        raise ValueError("the API key is not a single word (it holds spaces or control characters)")
    return key


def _stored(settings: Settings, key: str) -> str:
    value = settings.value(key)
    return value.strip() if isinstance(value, str) else ""


def load_compute(settings: Settings) -> Compute:
    """Make the saved setting the current one (Slicer calls this once at start-up); a saved server that is
    incomplete or not valid is logged (never its key) and jobs run on this computer."""
    url, key = _stored(settings, SETTINGS_URL), _stored(settings, SETTINGS_KEY)
    if not url:
        use_this_computer()
        return current_compute()
    try:
        url, _ = check_server_url(url)
        key = check_api_key(key)
    except ValueError as error:
        logging.warning("MedDL: the saved Compute setting is not used (%s); jobs run on this computer", error)
        use_this_computer()
    else:
        use_server(url, key)
    return current_compute()


def save_compute(settings: Settings, url: str, api_key: str) -> list[str]:
    """Store the setting and make it current: no `url` means this computer (the saved server and key are
    cleared). An empty `api_key` keeps the saved key, but only for the same server address (a key is never sent
    to another server). Returns warnings to show; raises ValueError, with nothing changed, for a bad address or
    key."""
    if not str(url or "").strip():
        settings.setValue(SETTINGS_URL, "")
        settings.setValue(SETTINGS_KEY, "")
        use_this_computer()
        return []
    url, found = check_server_url(url)
    if not str(api_key or "").strip():
        saved_url, saved_key = _stored(settings, SETTINGS_URL), _stored(settings, SETTINGS_KEY)
        try:
            same = bool(saved_key) and check_server_url(saved_url)[0] == url
        except ValueError:
            same = False
        if not same:
            raise ValueError("enter the API key for this server" + (" (the saved key belongs to another server)"
                                                                    if saved_key else ""))
        api_key = saved_key
    key = check_api_key(api_key)
    settings.setValue(SETTINGS_URL, url)
    settings.setValue(SETTINGS_KEY, key)
    use_server(url, key)
    return found


# ---- the models the setting can run (the model selectors' list)

LIST_TIMEOUT_S = 10.0
_server_models: dict[Compute, Union[list[dict[str, Any]], MeddlError]] = {}


def server_models(compute: Optional[Compute] = None, refresh: bool = False) -> list[dict[str, Any]]:
    """The model library of the server (`ServerClient.models()`), asked once per server and key and kept until
    `refresh`; a failure is kept too (raised again as it was), so that a list filled as the user types does not
    wait for an unreachable server each time. Raises MeddlError (the client's message, never the key)."""
    compute = compute or current_compute()
    if not compute.server_url:
        raise ValueError("the Compute setting is this computer, not a server")
    if refresh or compute not in _server_models:
        try:
            with warnings.catch_warnings():  # http to another host: check_server_url says it where it is shown
                warnings.simplefilter("ignore")
                client = ServerClient(compute.server_url, compute.api_key, timeout=LIST_TIMEOUT_S)
            _server_models[compute] = [item for item in client.models() if isinstance(item, dict)]
        except MeddlError as error:
            _server_models[compute] = error
    answer = _server_models[compute]
    if isinstance(answer, MeddlError):
        raise answer
    return answer


def forget_server_models() -> None:
    """Ask the servers for their lists again (after the setting changed)."""
    _server_models.clear()


def check_connection(url: str, api_key: str) -> str:
    """What "Test connection" says: `connected: N models` (and warnings about the address) for the server at `url`,
    whose list is kept for the model selectors. An empty `api_key` is the current setting's key when `url` is the
    current server. Raises ValueError or MeddlError with the reason (never the key)."""
    url, found = check_server_url(url)
    current = current_compute()
    if not str(api_key or "").strip() and current.server_url == url:
        api_key = current.api_key
    models = server_models(Compute(url, check_api_key(api_key)), refresh=True)
    return "; ".join([f"connected: {len(models)} model{'' if len(models) == 1 else 's'}", *found])


def _row(item: dict[str, Any]) -> ModelRow:
    """A server's model (`ModelRow.as_dict()` on its side) as a row; missing fields are blank."""
    values = {}
    for field in dataclasses.fields(ModelRow):
        value = item.get(field.name)
        if field.name in ("installed",):
            values[field.name] = value is True
        elif field.name in ("size_bytes", "cpu_seconds", "gpu_seconds"):
            values[field.name] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        else:
            values[field.name] = value if isinstance(value, str) else ""
    return ModelRow(**values)


def server_model_rows(models: list[dict[str, Any]], task: str, search: str = "",
                      installed_only: bool = False) -> list[ModelRow]:
    """The server's models as rows, filtered as the local library's list is (task, search text, installed)."""
    rows = [_row(item) for item in models if isinstance(item.get("id"), str) and item["id"]]
    return filter_rows(rows, search, task, installed=True if installed_only else None)


def model_rows_for(task: str, search: str = "", installed_only: bool = False,
                   compute: Optional[Compute] = None) -> list[ModelRow]:
    """The models a job can use under the Compute setting, for the model selectors: the local library on this
    computer, the server's library on a server (raises MeddlError when it cannot be reached: no local models
    then, which the server would not have)."""
    compute = compute or current_compute()
    if not compute.server_url:
        return library_rows(task, search, installed_only)
    return server_model_rows(server_models(compute), task, search, installed_only)


class ServerSession:
    """An interactive session kept on a server for one front end's jobs (the Segment Editor effect's prompts on one
    volume): opened by its first job, which uploads the inputs `template` fixes (its request type's
    `session_fields`); later jobs send only the prompts, and the server's worker runs only what is new. Opened again
    when the server lost it (idle timeout, restart): the answer is the same, only slower. `close()` frees it."""

    def __init__(self, compute: Compute, template: Request) -> None:
        self.compute, self.template = compute, template
        self._kept = KeptSession(ServerClient(compute.server_url, compute.api_key), template)

    def serves(self, compute: Compute, template: Request) -> bool:
        """Whether jobs of `template` on `compute` can use this session (the same server and fixed inputs)."""
        fields = getattr(type(template), "session_fields", ())
        return (not self._kept.closed and compute == self.compute and type(template) is type(self.template)
                and all(getattr(template, name) == getattr(self.template, name) for name in fields))

    def run(self, request: Request, progress, cancelled) -> Result:
        """`request` in the session (opening it first when needed), as `ServerClient.run` gives it."""
        return self._kept.run(request, progress, cancelled)

    def close(self) -> None:
        """Free the session on the server, in the background (a server that cannot be reached frees it after its
        idle timeout); its jobs cannot run any more."""
        self._kept.close(background=True)


def start_engine_job(request: Request, device: Optional[str], session: Optional[ServerSession] = None) -> Job:
    """The job that runs `request`: on the configured server (when it can run there; in `session` when that is
    one of this server's), else a local worker."""
    compute = current_compute()
    if compute.server_url and request.remote:
        return RemoteEngineJob(request, compute, session if session is not None and session.compute == compute
                               else None)
    return EngineJob(request, device=device)


class RemoteEngineJob(Job):
    """A request run by a MedDL server, with the interface of a local `EngineJob` (poll, cancel, finish)."""

    def __init__(self, request: Request, compute: Compute, session: Optional[ServerSession] = None) -> None:
        self.request, self.compute, self.session = request, compute, session
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
            if self.session is not None:
                result = self.session.run(self.request, self._progress, self._cancel.is_set)
            else:
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
