"""The Python client of a MedDL server: run a worker request remotely as if it ran here.

`ServerClient(url, api_key).run(request, progress, cancelled)` uploads the request's input files (a folder,
such as a DICOM series, is zipped first), submits the job, follows its progress, downloads what it wrote into
the output paths the request names (each file whole: written under a temporary name and renamed only when
every download is complete), releases the server's copy and returns the request's result with local paths.
A failed job raises the error class the local command would (InputError, ModelError, ... with the same
message and exit code); a cancelled one raises JobCancelled; a server that stops answering raises
ServerUnavailable.

It uses only the standard library (http.client, ssl), so that it runs in Slicer's Python and in any
installation of the engine without further packages (Slicer ships `requests`, a pip installation of meddl
need not have it; `httpx` is in neither). It never follows redirects and never reads proxy settings: the API
key goes only to the server named, only in the Authorization header, and no message it raises contains it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import http.client
import io
import json
import os
import re
import secrets
import ssl
import tempfile
import time
import urllib.parse
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import DeviceError, InputError, MeddlError, ModelError, OutputError
from ..models.formats import MODEL_SUFFIXES, card_path_for
from ..progress import Progress, no_progress, report_metrics
from ..protocol import Request, Result
from .uploads import HEADER_CHECKED, SUFFIXES, check_image_header, suffix_of

FINISHED = ("done", "failed", "cancelled")
CHUNK = 1 << 20
REWRITTEN_SUFFIXES = (".csv", ".json", ".txt")  # small text outputs whose paths the server hides and we restore
MAX_REWRITTEN_BYTES = 16 << 20
MAX_ANSWER_BYTES = 64 << 20  # an API answer (JSON) larger than this is not the MedDL API
ERROR_CLASSES = {kind.__name__: kind for kind in (MeddlError, InputError, ModelError, OutputError, DeviceError)}


class ServerError(MeddlError):
    """The server refused the client, or answered something that is not MedDL's API."""


class ServerUnavailable(ServerError):
    """The server cannot be reached, or stopped answering."""


class JobCancelled(MeddlError):
    """The job was cancelled (by the caller, or by the server stopping); nothing was written."""

    exit_code = 130


class RemoteError(MeddlError):
    """A failure the server reported with a kind that is not one of meddl.errors (its kind and exit code kept)."""

    def __init__(self, message: str, kind: str = "MeddlError", exit_code: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


def remote_error(kind: Any, message: str, exit_code: Any) -> MeddlError:
    """The exception a local run would raise for the server's error event."""
    code = exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else 1
    kind = str(kind or "MeddlError")
    error_type = ERROR_CLASSES.get(kind)
    error = error_type(message) if error_type is not None else RemoteError(message, kind, code)
    error.exit_code = code
    return error


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _map_strings(item, change) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(item, change) for item in value]
    return value


WINDOWS_RESERVED = re.compile(r'[<>:"|?*\x00-\x1f]|[. ]$')  # drive letters, streams, names Windows changes


def _plain_name(part: str) -> bool:
    """Whether `part` is one plain file or folder name here: not empty, `.` or `..`, no separator or NUL (nor,
    on Windows, a drive, a stream or a name that Windows would shorten)."""
    if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
        return False
    return not (os.name == "nt" and WINDOWS_RESERVED.search(part))


def _is_dicom_file(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as stream:
        stream.seek(128)
        return stream.read(4) == b"DICM"
    return False


class _Exchange:
    """One run's mapping between local paths and the server's `upload:ID` and `file:<field>/...` tokens."""

    def __init__(self) -> None:
        self.inputs: dict[str, Path] = {}  # upload id -> the local path it came from
        self.stems: dict[str, str] = {}  # upload id -> the local name the server's file name stands for
        self.outputs: dict[str, list[Path]] = {}  # output field -> its local paths

    def local_file(self, relative: str) -> Path:
        """Where `<field>/<relative path>` goes: beside the field's local path (F itself for its own name)."""
        parts = relative.split("/")
        if len(parts) < 2 or parts[0] not in self.outputs or not all(map(_plain_name, parts)):
            raise ServerError(f"the server listed the file {relative[:80]!r}, which is not inside an output")
        targets = self.outputs[parts[0]]
        target = next((path for path in targets if path.name == parts[1]), targets[0])
        rest = [self._renamed(part) for part in parts[1:]]
        if not all(map(_plain_name, rest)):  # an input's local name put in place of its id may not make a path
            raise ServerError(f"the server listed the file {relative[:80]!r}, which is not inside an output")
        return target.parent.joinpath(*rest)

    def _renamed(self, part: str) -> str:
        for upload_id, stem in self.stems.items():
            part = part.replace(upload_id, stem)
        return part

    def check_local(self, text: str) -> str:
        """Refuse a result naming a local file that is neither an input nor inside an output's folder: a hostile
        server must not make a front end read (and, say, upload again as a next round's state) another file."""
        path = Path(text).expanduser()
        if not text or len(text) > 4096 or not (path.is_absolute() or os.sep in text or "/" in text):
            return text
        with contextlib.suppress(OSError, ValueError):
            if path.exists():
                resolved = path.resolve()
                allowed = [target.parent.resolve() for targets in self.outputs.values() for target in targets]
                inputs = [source.resolve() for source in self.inputs.values()]
                if resolved not in inputs and not any(resolved.is_relative_to(folder) for folder in allowed):
                    raise ServerError(f"the server's result names the local file {text[:80]!r}, which is not one "
                                      "of this job's inputs or outputs")
        return text

    def localize(self, text: str) -> str:
        """A server string with its tokens turned into local paths."""
        exact = re.fullmatch(r"file:([^/]+/.+)", text)
        if exact:
            with contextlib.suppress(ServerError):
                return str(self.local_file(exact.group(1)))
        exact = re.fullmatch(r"upload:([A-Za-z0-9_-]{16,64})", text)
        if exact and exact.group(1) in self.inputs:
            return str(self.inputs[exact.group(1)])
        for upload_id, path in self.inputs.items():
            text = text.replace(f"upload:{upload_id}", str(path))
        for field, paths in self.outputs.items():
            text = text.replace(f"file:{field}/", f"{paths[0].parent}{os.sep}")
        return text.replace("<job folder>", "the server's job folder")


class ServerClient:
    """A MedDL server (`meddl serve`) seen from a client.

    verify: True (the system's certificate authorities), the path of a CA certificate file (a server's own
    certificate), or False (no check: only for tests on loopback). timeout: seconds a single HTTP exchange may
    take. busy_wait_s: how long `run` keeps trying when the server says this key has its limit of jobs.
    """

    def __init__(self, url: str, api_key: str, verify: Union[bool, str, Path] = True, timeout: float = 60.0,
                 busy_wait_s: float = 3600.0) -> None:
        parts = urllib.parse.urlsplit(str(url).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{url!r} is not a server address such as https://gpu-box:8765")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise InputError("a server address holds no user, password, query or fragment (the API key goes "
                             "in a file or $MEDDL_API_KEY)")
        if (not api_key or any(ch.isspace() for ch in api_key.strip()) or not api_key.strip().isprintable()
                or not api_key.isascii()):
            raise InputError("the API key is empty or not a single word (of ASCII characters)")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._authorization = f"Bearer {api_key.strip()}"
        self.timeout = timeout
        self.busy_wait_s = busy_wait_s
        self._context: Optional[ssl.SSLContext] = None
        if self._https:
            if verify is False:
                self._context = ssl._create_unverified_context()  # noqa: S323 (asked for: tests on loopback)
            elif verify is True:
                self._context = ssl.create_default_context()
            else:
                self._context = ssl.create_default_context(cafile=str(verify))
        elif self._host not in ("localhost", "127.0.0.1", "::1"):
            warnings.warn(f"{self.url}: the API key and the images travel unencrypted (use https)", stacklevel=2)
        self._max_upload: Optional[int] = None
        self._started = False

    def __repr__(self) -> str:
        return f"ServerClient({self.url!r})"

    # ---- HTTP

    def _connection(self, timeout: Optional[float] = None) -> http.client.HTTPConnection:
        timeout = self.timeout if timeout is None else timeout
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        return {"Authorization": self._authorization, "Accept": "application/json", **(extra or {})}

    def _unavailable(self, error: BaseException) -> ServerError:
        if isinstance(error, ssl.SSLCertVerificationError):
            return ServerError(f"the TLS certificate of the MedDL server at {self.url} is not trusted "
                               f"({error.verify_message}): give the server's CA certificate (verify=FILE)")
        reason = type(error).__name__ if not str(error) else f"{type(error).__name__}: {error}"
        if not self._started:
            return ServerUnavailable(f"cannot reach the MedDL server at {self.url} ({reason}); is `meddl serve` "
                                     "running there?")
        return ServerUnavailable(f"the MedDL server at {self.url} stopped answering ({reason}); if it was stopped "
                                 "or restarted, its jobs are gone: run the job again when it is back")

    def _exchange(self, method: str, path: str, body: Optional[bytes] = None,
                  headers: Optional[dict[str, str]] = None, timeout: Optional[float] = None) -> tuple[int, Any, dict]:
        connection = self._connection(timeout)
        try:
            connection.request(method, self._base + path, body=body, headers=self._headers(headers))
            response = connection.getresponse()
            data = self._read_answer(response)
            answer_headers = {key.lower(): value for key, value in response.getheaders()}
        except (OSError, http.client.HTTPException) as error:
            raise self._unavailable(error) from None
        finally:
            connection.close()
        return response.status, self._json(data, response.status), answer_headers

    def _read_answer(self, response: http.client.HTTPResponse) -> bytes:
        """An API answer's body, at most MAX_ANSWER_BYTES (a server answering without end is not read whole)."""
        data = response.read(MAX_ANSWER_BYTES + 1)
        if len(data) > MAX_ANSWER_BYTES:
            raise ServerError(f"the server at {self.url} answered more than {MAX_ANSWER_BYTES >> 20} MB, which is "
                              "not the MedDL API (is it a MedDL server?)")
        return data

    def _json(self, data: bytes, status: int) -> Any:
        try:
            answer = json.loads(data) if data else {}
        except (ValueError, RecursionError):
            answer = None
        if isinstance(answer, dict) or (answer is not None and status >= 400):
            return answer
        if status >= 500:
            raise self._refusal(status, {})
        raise ServerError(f"the server at {self.url} answered HTTP {status} with something that is not the "
                          "MedDL API (is it a MedDL server?)")

    def _not_api(self, what: str) -> ServerError:
        return ServerError(f"the server at {self.url} answered {what}, which is not the MedDL API (is it a MedDL "
                           "server?)")

    def _call(self, method: str, path: str, payload: Any = None, expect: Iterable[int] = (200,),
              timeout: Optional[float] = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        status, answer, headers = self._exchange(method, path, body, {"Content-Type": "application/json"}
                                                 if body is not None else None, timeout)
        if status not in tuple(expect):
            raise self._refusal(status, answer)
        return answer

    def _refusal(self, status: int, answer: Any, exchange: Optional[_Exchange] = None) -> MeddlError:
        detail = str(answer.get("detail", "")) if isinstance(answer, dict) else ""
        if exchange is not None:
            detail = exchange.localize(detail)
        if status == 401:
            return ServerError(f"the MedDL server at {self.url} refused the API key (HTTP 401): check the key, or ask "
                               "the server's administrator for one")
        if status in (400, 413) and isinstance(answer, dict) and "kind" in answer:
            return remote_error(answer["kind"], detail, answer.get("exit_code", 1))
        if status == 413:
            return InputError(detail or "the upload is larger than the server accepts")
        if status in (502, 503, 504):
            return ServerUnavailable(f"the MedDL server at {self.url} is not available (HTTP {status}); run the job "
                                     "again when it is back")
        if status == 404:
            return ServerError(f"the MedDL server at {self.url} does not know this job or upload (HTTP 404): it "
                               "expired, or the server was restarted")
        return ServerError(f"the MedDL server at {self.url} answered HTTP {status}" + (f": {detail}" if detail
                                                                                        else ""))

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
        connection = self._connection()
        try:
            connection.putrequest("PUT", self._base + "/v1/uploads", skip_accept_encoding=True)
            for key, value in self._headers({"Content-Type": "application/octet-stream", "X-MedDL-Suffix": suffix,
                                             "Content-Length": str(size)}).items():
                connection.putheader(key, value)
            connection.endheaders()
            sent_error = None
            try:
                with open(path, "rb") as stream:
                    for chunk in iter(lambda: stream.read(CHUNK), b""):
                        connection.send(chunk)
            except OSError as error:  # the server may have answered early (413) and closed
                sent_error = error
            try:
                response = connection.getresponse()
                data = self._read_answer(response)
            except (OSError, http.client.HTTPException) as error:
                raise self._unavailable(sent_error or error) from None
        except (OSError, http.client.HTTPException) as error:
            raise self._unavailable(error) from None
        finally:
            connection.close()
        answer = self._json(data, response.status)
        if response.status != 201:
            raise self._refusal(response.status, answer)
        if not isinstance(answer.get("upload"), str):
            raise self._not_api("an upload without its id")
        return answer["upload"]

    def delete_upload(self, upload_id: str) -> None:
        with contextlib.suppress(MeddlError):
            self._call("DELETE", f"/v1/uploads/{urllib.parse.quote(upload_id)}", expect=(200, 404))

    def cancel(self, job_id: str) -> None:
        """Cancel a job and remove its files on the server (nothing happens when it is gone)."""
        self._call("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}", expect=(200, 404))

    # ---- running a request

    def run(self, request: Request, progress: Optional[Progress] = None,
            cancelled: Optional[Callable[[], bool]] = None) -> Result:
        """Run `request` on the server: upload, submit, follow, download, release; the local-path result."""
        if not request.remote:
            raise ServerError(f"{type(request).__name__} runs only on this computer, not on a server")
        progress = progress or no_progress
        is_cancelled = cancelled or (lambda: False)
        self.health()
        exchange = _Exchange()
        temporary: list[Path] = []
        uploaded: list[str] = []
        job_id = None
        try:
            fields = self._fields(request, exchange, temporary, uploaded, progress, is_cancelled)
            job_id = self._submit(request, fields, exchange, progress, is_cancelled)
            uploaded = []  # the job has them now
            state = self._follow(job_id, exchange, progress, is_cancelled, 1.0 if cancelled else 10.0)
            if state == "failed":
                error = self._call("GET", f"/v1/jobs/{job_id}").get("error")
                error = error if isinstance(error, dict) else {}
                self._release(job_id)
                job_id = None
                raise remote_error(error.get("kind"), exchange.localize(str(error.get("message", "the job failed"))),
                                   error.get("exit_code", 1))
            if state == "cancelled":
                job_id = None
                raise JobCancelled("the server cancelled the job (it was stopped, or the job was cancelled "
                                   "elsewhere); nothing was written")
            answer = self._call("GET", f"/v1/jobs/{job_id}/result")
            files, result = answer.get("files", []), answer.get("result", {})
            if not (isinstance(files, list) and all(isinstance(item, str) for item in files)
                    and isinstance(result, dict)):
                raise self._not_api("a result that is not {\"result\": {...}, \"files\": [...]}")
            self._download(job_id, files, exchange, progress, is_cancelled)
            self._release(job_id)
            job_id = None
            values = _map_strings(result, exchange.localize)
            _map_strings(values, exchange.check_local)
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

    def _send(self, path: Path, temporary: list[Path]) -> tuple[Path, str]:
        """What to upload for a local input (a file, or a zip made of a folder or of a model file and its card)
        and its suffix."""
        if path.is_dir():
            return self._zip(temporary, [(path, "")], top=re.sub(r"[^A-Za-z0-9._-]", "_", path.name) or "folder"), \
                ".zip"
        if path.suffix.lower() in MODEL_SUFFIXES:
            card = card_path_for(path)
            return self._zip(temporary, [(path, path.name), *([(card, card.name)] if card.is_file() else [])]), ".zip"
        suffix = suffix_of(path.name)
        if suffix in HEADER_CHECKED:
            try:
                check_image_header(path)
            except InputError:  # its data is in another file: send one self-contained copy
                return self._self_contained(path, suffix, temporary), suffix.replace(".nhdr", ".nrrd").replace(
                    ".mhd", ".mha")
        if not suffix:
            if not _is_dicom_file(path):
                raise InputError(f"{path}: a server accepts files of the types {' '.join(SUFFIXES)}, or folders")
            suffix = ".dcm"
        return path, suffix

    def _self_contained(self, path: Path, suffix: str, temporary: list[Path]) -> Path:
        import SimpleITK as sitk

        descriptor, name = tempfile.mkstemp(suffix=suffix.replace(".nhdr", ".nrrd").replace(".mhd", ".mha"),
                                            prefix="meddl-upload-")
        os.close(descriptor)
        temporary.append(Path(name))
        try:
            sitk.WriteImage(sitk.ReadImage(str(path)), name, True)
        except RuntimeError as error:
            raise InputError(f"cannot read image {path}: {str(error).strip().splitlines()[-1]}") from None
        return Path(name)

    def _zip(self, temporary: list[Path], items: list[tuple[Path, str]], top: str = "") -> Path:
        descriptor, name = tempfile.mkstemp(suffix=".zip", prefix="meddl-upload-")
        temporary.append(Path(name))
        with os.fdopen(descriptor, "wb") as stream, zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED,
                                                                    compresslevel=1) as archive:
            for source, member in items:
                if source.is_dir():
                    for path in sorted(source.rglob("*")):
                        if path.is_file():
                            archive.write(path, "/".join(filter(None, (top, path.relative_to(source).as_posix()))))
                else:
                    archive.write(source, "/".join(filter(None, (top, member))))
        return Path(name)

    def _fields(self, request: Request, exchange: _Exchange, temporary: list[Path], uploaded: list[str],
                progress: Progress, is_cancelled: Callable[[], bool]) -> dict[str, Any]:
        """The request's fields as the server takes them: inputs uploaded, outputs as plain names."""
        fields = {field: value for field, value in _request_fields(request).items()}
        sent: dict[Path, str] = {}

        def send(local: str) -> str:
            path = Path(local).absolute()
            if not path.exists():
                raise InputError(f"input not found: {local}")
            if path not in sent:
                self._check_cancelled(is_cancelled)
                progress(0.0, f"uploading {path.name}")
                source, suffix = self._send(path, temporary)
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
        return fields

    def _submit(self, request: Request, fields: dict[str, Any], exchange: _Exchange, progress: Progress,
                is_cancelled: Callable[[], bool]) -> str:
        payload = json.dumps({"command": request.command, "request": type(request).__name__,
                              "fields": fields}).encode("utf-8")
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
            if status != 429 or time.monotonic() > deadline:
                raise self._refusal(status, answer, exchange)
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

    def _follow(self, job_id: str, exchange: _Exchange, progress: Progress, is_cancelled: Callable[[], bool],
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

    def _download(self, job_id: str, files: list[str], exchange: _Exchange, progress: Progress,
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
                    self._fetch(job_id, relative, sink)
                if target.name.lower().endswith(REWRITTEN_SUFFIXES):
                    _restore_paths(name, target.name.lower(), exchange)
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

    def _fetch(self, job_id: str, relative: str, sink) -> None:
        """Stream one result file into `sink` (an open local file)."""
        connection = self._connection()
        try:
            path = f"/v1/jobs/{urllib.parse.quote(job_id)}/files/{urllib.parse.quote(relative)}"
            try:
                connection.request("GET", self._base + path, headers=self._headers({"Accept": "*/*"}))
                response = connection.getresponse()
                if response.status != 200:
                    raise self._refusal(response.status, self._json(self._read_answer(response), response.status))
                expected = response.getheader("content-length")
                received = 0
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    try:
                        sink.write(chunk)
                    except OSError as error:
                        raise OutputError(f"cannot write {relative.split('/')[-1]}: {error.strerror or error}") \
                            from None
            except (OSError, http.client.HTTPException) as error:
                raise self._unavailable(error) from None
            if expected is not None and (not expected.strip().isdigit() or received != int(expected)):
                raise ServerUnavailable(f"the MedDL server at {self.url} stopped answering while sending "
                                        f"{relative} ({received} of {expected} bytes)")
        finally:
            connection.close()

    def _release(self, job_id: str) -> None:
        with contextlib.suppress(MeddlError):
            self._call("POST", f"/v1/jobs/{urllib.parse.quote(job_id)}/release", expect=(200, 404, 409))


def _request_fields(request: Request) -> dict[str, Any]:
    return {field.name: getattr(request, field.name) for field in dataclasses.fields(request) if field.init}


def _restore_paths(path: Path, name: str, exchange: _Exchange) -> None:
    """Put local paths back into a small text output the server wrote with its tokens (a CSV table's inputs,
    a JSON report's files), keeping the format valid."""
    if path.stat().st_size > MAX_REWRITTEN_BYTES:
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if "upload:" not in text and "file:" not in text:
        return
    if name.endswith(".json"):
        try:
            changed = json.dumps(_map_strings(json.loads(text), exchange.localize), indent=1)
        except (ValueError, RecursionError):
            return
    elif name.endswith(".csv"):
        try:
            rows = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error:
            return
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n" if "\r\n" in text else "\n").writerows(
            [[exchange.localize(cell) for cell in row] for row in rows])
        changed = out.getvalue()
    else:
        changed = exchange.localize(text)
    with open(path, "w", encoding="utf-8", newline="") as stream:
        stream.write(changed)


__all__ = ["JobCancelled", "RemoteError", "ServerClient", "ServerError", "ServerUnavailable", "remote_error"]
