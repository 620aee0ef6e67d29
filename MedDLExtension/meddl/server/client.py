"""The Python client of a MedDL server: run a worker request remotely as if it ran here.

`ServerClient(url, api_key).run(request, progress, cancelled)` uploads the request's input files (a folder,
such as a DICOM series, is zipped first), submits the job, follows its progress, downloads what it wrote into
the output paths the request names (each file whole: written under a temporary name and renamed only when
every download is complete), releases the server's copy and returns the request's result with local paths.
A failed job raises the error class the local command would (InputError, ModelError, ... with the same
message and exit code); a cancelled one raises JobCancelled; a server that stops answering raises
ServerUnavailable. `open_session` and `run(..., session=...)` keep an interactive session on the server
(`meddl.server.interactive` wraps them for front ends).

It uses only the standard library (http.client, ssl), so that it runs in Slicer's Python and in any
installation of the engine without further packages (Slicer ships `requests`, a pip installation of meddl
need not have it; `httpx` is in neither). `transport` holds its HTTP (no redirects, no proxies, the API key
only in the Authorization header), `exchange` the mapping between local paths and the server's tokens,
`sending` what a local input is uploaded as.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import InputError, MeddlError, OutputError
from ..progress import Progress, no_progress, report_metrics
from ..protocol import Request, Result
from .exchange import REWRITTEN_SUFFIXES, Exchange, restore_paths
from .hiding import map_strings
from .sending import upload_source
from .transport import RemoteError, ServerError, ServerUnavailable, Transport, remote_error
from .uploads import suffix_of

FINISHED = ("done", "failed", "cancelled")


class JobCancelled(MeddlError):
    """The job was cancelled (by the caller, or by the server stopping); nothing was written."""

    exit_code = 130


class SessionExpired(ServerError):
    """The server no longer has the interactive session (closed, idle too long, or the server restarted)."""


@dataclass(frozen=True)
class SessionRef:
    """An interactive session open on a server: its id, and the local paths of the inputs it holds by their
    upload ids (how messages naming them are read here)."""

    id: str
    inputs: dict[str, Path]
    stems: dict[str, str]


class ServerClient(Transport):
    """A MedDL server (`meddl serve`) seen from a client.

    verify: True (the system's certificate authorities), the path of a CA certificate file (a server's own
    certificate), or False (no check: only for tests on loopback). timeout: seconds a single HTTP exchange may
    take. busy_wait_s: how long `run` keeps trying when the server says this key has its limit of jobs.
    """

    def __init__(self, url: str, api_key: str, verify: Union[bool, str, Path] = True, timeout: float = 60.0,
                 busy_wait_s: float = 3600.0) -> None:
        super().__init__(url, api_key, verify, timeout)
        self.busy_wait_s = busy_wait_s
        self._max_upload: Optional[int] = None

    def __repr__(self) -> str:
        return f"ServerClient({self.url!r})"

    # ---- the API

    def health(self) -> dict[str, Any]:
        answer = self._call("GET", "/v1/health")
        if not isinstance(answer, dict) or "meddl" not in answer:
            raise ServerError(f"the server at {self.url} is not a MedDL server")
        self._started = True
        if isinstance(answer.get("max_upload_bytes"), int):
            self._max_upload = answer["max_upload_bytes"]
        return answer

    def models(self) -> list[dict[str, Any]]:
        """The server's model library, as `meddl models list --json` shows it."""
        answer = self._call("GET", "/v1/models")
        self._started = True
        models = answer.get("models", [])
        if not isinstance(models, list):
            raise self._not_api("a model list that is not a list")
        return models

    def upload(self, path: Union[str, Path], suffix: str) -> str:
        """Send one file; its upload id."""
        path = Path(path)
        size = path.stat().st_size
        if self._max_upload is not None and size > self._max_upload:
            raise InputError(f"{path} is {size / 1e6:.1f} MB, more than the server at {self.url} accepts "
                             f"({self._max_upload / 1e6:.1f} MB)")
        status, answer = self._put_file("/v1/uploads", path, {
            "Content-Type": "application/octet-stream", "X-MedDL-Suffix": suffix, "Content-Length": str(size)})
        if status != 201:
            raise self._refusal(status, answer)
        if not isinstance(answer.get("upload"), str):
            raise self._not_api("an upload without its id")
        return answer["upload"]

    def delete_upload(self, upload_id: str) -> None:
        with contextlib.suppress(MeddlError):
            self._call("DELETE", f"/v1/uploads/{urllib.parse.quote(upload_id)}", expect=(200, 404))

    def open_session(self, request: Request, progress: Optional[Progress] = None) -> SessionRef:
        """Upload the inputs an interactive session of `request`'s type fixes (its `session_fields`: the image,
        the model, ...) once, and open the session; its jobs are `run(request, session=...)`."""
        fixed = set(getattr(type(request), "session_fields", ()))
        if not fixed:
            raise ServerError(f"{type(request).__name__} has no interactive sessions")
        self.health()
        exchange, temporary, uploaded = Exchange(), [], []
        try:
            fields = self._fields(request, exchange, temporary, uploaded, progress or no_progress, lambda: False, fixed)
            payload = {"command": request.command, "request": type(request).__name__, "fields": fields}
            status, answer, _ = self._exchange("POST", "/v1/sessions", json.dumps(payload).encode("utf-8"),
                                               {"Content-Type": "application/json"})
            if status != 201:
                raise self._refusal(status, answer, exchange.localize)
            if not isinstance(answer.get("session"), str):
                raise self._not_api("a session without its id")
            uploaded = []  # the session has them now
            return SessionRef(answer["session"], dict(exchange.inputs), dict(exchange.stems))
        finally:
            for upload_id in uploaded:
                self.delete_upload(upload_id)
            for path in temporary:
                with contextlib.suppress(OSError):
                    path.unlink()

    def close_session(self, session_id: str) -> None:
        """Close an interactive session: the server forgets it and removes its files (nothing if it is gone)."""
        self._call("DELETE", f"/v1/sessions/{urllib.parse.quote(session_id)}", expect=(200, 404))

    def cancel(self, job_id: str) -> None:
        """Cancel a job and remove its files on the server (nothing happens when it is gone)."""
        self._call("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}", expect=(200, 404))

    # ---- running a request

    def run(self, request: Request, progress: Optional[Progress] = None,
            cancelled: Optional[Callable[[], bool]] = None, session: Optional[SessionRef] = None) -> Result:
        """Run `request` on the server: upload, submit, follow, download, release; the local-path result. In an
        open `session`, the fields the session fixed are not sent (SessionExpired when the server lost it)."""
        if not request.remote:
            raise ServerError(f"{type(request).__name__} runs only on this computer, not on a server")
        progress = progress or no_progress
        is_cancelled = cancelled or (lambda: False)
        self.health()
        exchange = Exchange()
        names = None
        if session is not None:
            exchange.inputs.update(session.inputs)
            exchange.stems.update(session.stems)
            names = set(_request_fields(request)) - set(getattr(type(request), "session_fields", ()))
        temporary: list[Path] = []
        uploaded: list[str] = []
        job_id = None
        try:
            fields = self._fields(request, exchange, temporary, uploaded, progress, is_cancelled, names)
            job_id = self._submit(request, fields, exchange, progress, is_cancelled, session)
            uploaded = []  # the job has them now
            state = self._follow(job_id, exchange, progress, is_cancelled, 1.0 if cancelled else 10.0)
            if state == "failed":
                error = self._failure(job_id, exchange)
                job_id = None
                raise error
            if state == "cancelled":
                job_id = None
                raise JobCancelled("the server cancelled the job (it was stopped, or the job was cancelled "
                                   "elsewhere); nothing was written")
            files, result = self._result(job_id)
            self._download(job_id, files, exchange, progress, is_cancelled)
            self._release(job_id)
            job_id = None
            values = map_strings(result, exchange.localize)
            map_strings(values, exchange.check_local)
            return request.read_result(values)
        except BaseException as error:
            if job_id is not None and not isinstance(error, ServerUnavailable):
                with contextlib.suppress(MeddlError):
                    self.cancel(job_id)
            for upload_id in uploaded:
                self.delete_upload(upload_id)
            raise
        finally:
            for path in temporary:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _check_cancelled(self, is_cancelled: Callable[[], bool], job_id: Optional[str] = None) -> None:
        if is_cancelled():
            if job_id is not None:
                with contextlib.suppress(MeddlError):
                    self.cancel(job_id)
            raise JobCancelled("cancelled; the server's job and its files were removed")

    def _fields(self, request: Request, exchange: Exchange, temporary: list[Path], uploaded: list[str],
                progress: Progress, is_cancelled: Callable[[], bool],
                names: Optional[set[str]] = None) -> dict[str, Any]:
        """The request's fields (those in `names`, when given) as the server takes them: inputs uploaded,
        outputs as plain names."""
        fields = {field: value for field, value in _request_fields(request).items() if names is None or field in names}
        sent: dict[Path, str] = {}

        def send(local: str) -> str:
            path = Path(local).absolute()
            if not path.exists():
                raise InputError(f"input not found: {local}")
            if path not in sent:
                self._check_cancelled(is_cancelled)
                progress(0.0, f"uploading {path.name}")
                source, suffix = upload_source(path, temporary)
                upload_id = self.upload(source, suffix)
                uploaded.append(upload_id)
                exchange.inputs[upload_id] = path
                exchange.stems[upload_id] = path.name[: len(path.name) - len(suffix_of(path.name))] \
                    if suffix_of(path.name) else path.stem if path.is_file() else path.name
                sent[path] = f"upload:{upload_id}"
            return sent[path]

        for field in type(request).file_inputs:
            value = fields.get(field)
            if isinstance(value, (str, os.PathLike)) and str(value):
                fields[field] = send(str(value))
            elif isinstance(value, (list, tuple)):
                fields[field] = [send(str(item)) for item in value]
        model = fields.get("model")
        if isinstance(model, (str, os.PathLike)) and model and Path(model).exists():
            fields["model"] = send(str(model))  # a model file or folder here: only a server that allows it runs it
        _name_outputs(request, fields, exchange)
        return fields

    def _submit(self, request: Request, fields: dict[str, Any], exchange: Exchange, progress: Progress,
                is_cancelled: Callable[[], bool], session: Optional[SessionRef] = None) -> str:
        job = {"command": request.command, "request": type(request).__name__, "fields": fields}
        payload = json.dumps({**job, "session": session.id} if session is not None else job).encode("utf-8")
        deadline = time.monotonic() + self.busy_wait_s
        told = False
        while True:
            self._check_cancelled(is_cancelled)
            status, answer, headers = self._exchange("POST", "/v1/jobs", payload,
                                                     {"Content-Type": "application/json"})
            if status == 202:
                if not isinstance(answer.get("job"), str):
                    raise self._not_api("a job without its id")
                return answer["job"]
            if status == 404 and session is not None:
                raise SessionExpired(f"the MedDL server at {self.url} no longer has the interactive session (it was "
                                     "closed, idle too long, or the server restarted)")
            if status != 429 or time.monotonic() > deadline:
                raise self._refusal(status, answer, exchange.localize)
            if not told:
                progress(0.0, "waiting: the server is running this key's other jobs")
                told = True
            try:
                pause = min(max(float(headers.get("retry-after", "2")), 0.2), 30.0)
            except ValueError:
                pause = 2.0
            end = time.monotonic() + pause
            while time.monotonic() < end:
                self._check_cancelled(is_cancelled)
                time.sleep(0.1)

    def _follow(self, job_id: str, exchange: Exchange, progress: Progress, is_cancelled: Callable[[], bool],
                wait: float) -> str:
        """Report the job's events until it ends (long polls of `wait` s: short when it may be cancelled)."""
        after = 0
        while True:
            self._check_cancelled(is_cancelled, job_id)
            answer = self._call("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/events?after={after}&wait={wait}",
                                timeout=self.timeout + wait)
            events, following = answer.get("events", []), answer.get("next", after)
            if (not isinstance(events, list) or not all(isinstance(event, dict) for event in events)
                    or not isinstance(following, int) or isinstance(following, bool)):
                raise self._not_api("events that are not {\"events\": [{...}, ...], \"next\": N}")
            for event in events:
                if event.get("event") in ("progress", "queued"):
                    try:
                        fraction = float(event.get("fraction", 0.0))
                    except (TypeError, ValueError):
                        fraction = 0.0
                    message = exchange.localize(str(event.get("message", "")))
                    if isinstance(event.get("metrics"), dict):
                        report_metrics(progress, fraction, message, event["metrics"])
                    else:
                        progress(fraction, message)
            after = following
            if answer.get("state") in FINISHED:
                return answer["state"]

    def _failure(self, job_id: str, exchange: Exchange) -> MeddlError:
        """The error a failed job raises here (the job released)."""
        error = self._call("GET", f"/v1/jobs/{job_id}").get("error")
        error = error if isinstance(error, dict) else {}
        self._release(job_id)
        return remote_error(error.get("kind"), exchange.localize(str(error.get("message", "the job failed"))),
                            error.get("exit_code", 1))

    def _result(self, job_id: str) -> tuple[list[str], dict[str, Any]]:
        """A done job's files (`<field>/<relative path>`) and result (with the server's tokens)."""
        answer = self._call("GET", f"/v1/jobs/{job_id}/result")
        files, result = answer.get("files", []), answer.get("result", {})
        if not (isinstance(files, list) and all(isinstance(item, str) for item in files)
                and isinstance(result, dict)):
            raise self._not_api("a result that is not {\"result\": {...}, \"files\": [...]}")
        return files, result

    def _download(self, job_id: str, files: list[str], exchange: Exchange, progress: Progress,
                  is_cancelled: Callable[[], bool]) -> None:
        """Every file into a temporary name beside its target; all renamed into place once all are complete."""
        plan = [(relative, exchange.local_file(relative)) for relative in files]
        created: list[Path] = []
        staged: list[tuple[Path, Path]] = []
        try:
            for relative, target in plan:
                self._check_cancelled(is_cancelled, job_id)
                progress(1.0, f"downloading {target.name}")
                for folder in reversed(target.parents):
                    if not folder.exists():
                        folder.mkdir()
                        created.append(folder)
                name = target.parent / f".meddl-download-{secrets.token_hex(8)}"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                descriptor = os.open(name, flags, 0o666)  # the permissions a local run's file would get (umask)
                staged.append((name, target))
                with os.fdopen(descriptor, "wb") as sink:
                    self._get_file(f"/v1/jobs/{urllib.parse.quote(job_id)}/files/{urllib.parse.quote(relative)}",
                                   sink, relative)
                if target.name.lower().endswith(REWRITTEN_SUFFIXES):
                    restore_paths(name, target.name.lower(), exchange)
            for temporary, target in staged:
                os.replace(temporary, target)
            staged = []
        except OSError as error:
            raise OutputError(f"cannot write the downloaded results: {error.strerror or error}") from None
        finally:
            for temporary, _ in staged:
                with contextlib.suppress(OSError):
                    temporary.unlink()
            if staged:
                for folder in reversed(created):
                    with contextlib.suppress(OSError):
                        folder.rmdir()

    def _release(self, job_id: str) -> None:
        with contextlib.suppress(MeddlError):
            self._call("POST", f"/v1/jobs/{urllib.parse.quote(job_id)}/release", expect=(200, 404, 409))


def _request_fields(request: Request) -> dict[str, Any]:
    return {field.name: getattr(request, field.name) for field in dataclasses.fields(request) if field.init}


def _name_outputs(request: Request, fields: dict[str, Any], exchange: Exchange) -> None:
    """Each output's local paths kept in `exchange` (their folders checked), its plain names put in `fields`."""
    for field in type(request).file_outputs:
        value = fields.get(field)
        if value is None or value == "":
            continue
        items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        paths = [Path(item).absolute() for item in items]
        for path in paths:
            if not path.parent.is_dir():
                raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
            if not os.access(path.parent, os.W_OK):
                raise OutputError(f"cannot write {path}: no permission to write in {path.parent}")
        exchange.outputs[field] = paths
        names = [path.name for path in paths]
        fields[field] = names[0] if isinstance(value, (str, os.PathLike)) else names


__all__ = ["JobCancelled", "RemoteError", "ServerClient", "ServerError", "ServerUnavailable", "SessionExpired",
           "SessionRef", "remote_error"]
