"""The MedDL server's HTTP API (v1): `create_app(settings)` builds the FastAPI application.

Every endpoint needs `Authorization: Bearer <key>`. A client uploads its input files (PUT /v1/uploads), submits
a worker request by name with its fields (POST /v1/jobs), follows the job's events, downloads the files it
wrote and releases it. The server builds the request dataclass itself: inputs are only this key's uploads,
outputs only plain file names placed in the job's folder, a model only an id of the server's library (or,
with --allow-model-uploads, an upload), and trust is never given to a model by a client. docs/SERVER.md
describes the API.

FastAPI is imported inside `create_app` (the `server` extra): the command line works without it. This module
deliberately has no `from __future__ import annotations`: FastAPI reads the handlers' annotations.
"""

import asyncio
import collections
import contextlib
import dataclasses
import importlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import __version__
from ..errors import InputError, MeddlError, ModelError, OutputError
from ..library.overview import model_rows
from ..models import catalog, store
from ..models.formats import MODEL_SUFFIXES, is_bundle, nnunet_results_folder
from ..protocol import Request
from ..tasks import TASKS
from .jobs import FINISHED, Job, JobService, TooManyJobs, WorkDir, worker_environment
from .keys import KeyRing
from .uploads import REFERENCE_PATTERN, TooManyUploads, Upload, UploadStore, UploadTooLarge, extract_zip

MAX_JOB_BODY = 1 << 20  # a job's JSON
MAX_TEXT = 4096  # characters in one text field
MAX_ITEMS = 10000  # items in one list field
MAX_WAIT_S = 30.0
MAX_PENDING_UPLOADS = 256  # uploads per key not yet taken by a job
UPLOAD_IDLE_S = 120.0  # an upload that receives nothing for this long is dropped (408)
MISSING_EXTRA = 'the MedDL server needs FastAPI and uvicorn: pip install "meddl[server]"'


class RequestRefused(MeddlError):
    """A job the server does not run (an unknown request, one marked local-only, a disabled feature)."""

    exit_code = 2


class ServerExtraMissing(MeddlError):
    """FastAPI or uvicorn is not installed."""

    exit_code = 2


@dataclass(frozen=True)
class ServerSettings:
    """What `meddl serve` is started with."""

    key_file: Path
    work_dir: Path
    models_dir: Optional[Path] = None
    max_upload_mb: float = 1024.0
    max_jobs_per_key: int = 4
    workers: int = 1
    result_ttl_s: float = 3600.0
    allow_model_uploads: bool = False
    allow_model_import: bool = False
    max_unpacked_mb: Optional[float] = None  # a zip upload's unpacked size (default: 4x the upload limit)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def max_unpacked_bytes(self) -> int:
        return int((self.max_unpacked_mb or 4 * self.max_upload_mb) * (1 << 20))


def default_work_dir(port: int) -> Path:
    """A folder of this user and port under the system's temporary folder."""
    try:
        user = re.sub(r"[^A-Za-z0-9_.-]", "_", os.getlogin())
    except OSError:
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"meddl-server-{user}-{port}"


def request_types() -> dict[str, type[Request]]:
    """Every registered worker request by class name (the tasks' command modules and the model library's),
    resolved on use as the task registry does."""
    modules = [task.commands_module() for task in TASKS.values()]
    modules.append(importlib.import_module("meddl.cli.models"))
    return {request.__name__: request for module in modules for request in module.REQUESTS}


_environment_lock = threading.Lock()


@contextlib.contextmanager
def models_folder(path: Optional[Path]):
    """The model library is read from $MEDDL_MODELS_DIR: point it at the server's --models-dir meanwhile."""
    if path is None:
        yield
        return
    with _environment_lock:
        before = os.environ.get("MEDDL_MODELS_DIR")
        os.environ["MEDDL_MODELS_DIR"] = str(path)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("MEDDL_MODELS_DIR", None)
            else:
                os.environ["MEDDL_MODELS_DIR"] = before


def model_list(settings: ServerSettings) -> list[dict[str, Any]]:
    with models_folder(settings.models_dir):
        return [row.as_dict() for row in model_rows()]


def known_model(settings: ServerSettings, model_id: str) -> bool:
    if not store.ID_PATTERN.match(model_id) or model_id.endswith("."):
        return False
    with models_folder(settings.models_dir):
        if catalog.has_entry(model_id):
            return True
        try:
            return store.installed(model_id) is not None
        except ModelError:  # a damaged library folder: the worker says what is wrong with it
            return True


# ---- checking a job's fields

def _type_text(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    text = text.replace(" ", "").replace("typing.", "").replace("Tuple[", "tuple[")
    if text.startswith("Optional[") and text.endswith("]"):
        return text[len("Optional["):-1] + "|None"
    return text


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def check_value(name: str, type_text: str, value: Any) -> Any:
    """A JSON value checked (and converted: lists to tuples) against a request field's annotation (the types
    requests use: str, bool, int, float, tuples of them, each optional); any other type is refused."""
    kind = type_text
    if kind.endswith("|None") or kind.startswith("None|"):
        kind = kind[:-len("|None")] if kind.endswith("|None") else kind[len("None|"):]
        if value is None:
            return None
    problem = f"field {name!r} must be {kind}"
    if kind == "str":
        if not isinstance(value, str) or len(value) > MAX_TEXT or "\0" in value:
            raise InputError(f"{problem} (text of at most {MAX_TEXT} characters)")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InputError(problem)
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(problem)
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise InputError(problem)
        return float(value)
    if kind.startswith("tuple[") and kind.endswith("]"):
        items = _split_top(kind[len("tuple["):-1])
        if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
            raise InputError(f"{problem} (a list)")
        if len(items) == 2 and items[1] == "...":
            return tuple(check_value(name, items[0], item) for item in value)
        if len(value) != len(items):
            raise InputError(f"{problem} (a list of {len(items)})")
        return tuple(check_value(name, item_type, item) for item_type, item in zip(items, value))
    raise RequestRefused(f"field {name!r}: the server cannot take values of type {type_text}")


def check_not_option(name: str, value: Any) -> None:
    """Refuse a text value (or list item) that the worker's command line would read as an option: the worker
    parses `--folds 0 --model /x --trust-model` as three options, not as folds."""
    if isinstance(value, str) and value.startswith("-"):
        raise InputError(f"field {name!r}: {value[:40]!r} starts with '-': the server does not take values that "
                         "read as command-line options")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_not_option(name, item)


def check_output_name(name: str, field: str) -> str:
    """A plain file name for an output: no folders, not `.` or `..`, printable, at most 255 bytes."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip()
            or not name.isprintable() or len(name.encode("utf-8", "surrogateescape")) > 255):
        raise OutputError(f"{field}: {name[:80]!r} is not a plain file name; an output is named without folders "
                          "(the server decides where it is written)")
    return name


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass
class JobPlan:
    """A checked job: the request type, its checked fields, and the uploads it takes."""

    request_type: type[Request]
    values: dict[str, Any]
    upload_ids: list[str]
    model_upload: Optional[str] = None


def plan_job(settings: ServerSettings, registry: dict[str, type[Request]], data: Any) -> JobPlan:
    """Check a job's JSON: {"command", "request", "fields"}; raise a MeddlError saying what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("fields", {}), dict):
        raise InputError('a job is a JSON object {"command": ..., "request": ..., "fields": {...}}')
    name, command = data.get("request"), data.get("command")
    request_type = registry.get(name) if isinstance(name, str) else None
    if request_type is None or (command is not None and command != request_type.command):
        raise RequestRefused(f"the server has no request {str(name)[:60]!r} for the command {str(command)[:40]!r}")
    if not request_type.remote:
        raise RequestRefused(f"{name} runs only on the computer that holds its files, not on a server")
    if request_type.command == "models" and not settings.allow_model_import:
        raise RequestRefused("this server does not install or import models for its clients "
                             "(it was started without --allow-model-import)")
    fields = {field.name: field for field in dataclasses.fields(request_type) if field.init}
    given = data.get("fields", {})
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise RequestRefused(f"{name} has no field {', '.join(map(repr, unknown))[:200]}")
    values = {key: check_value(key, _type_text(fields[key].type), value) for key, value in given.items()}
    for key, value in values.items():
        if key not in request_type.file_outputs:  # outputs become paths in the job's folder
            check_not_option(key, value)
    if "trust_model" in fields:
        values["trust_model"] = False  # trust is given when a model enters the server's library, never by a client
    if values.get("install_as") is not None and not settings.allow_model_import:
        raise RequestRefused("this server does not add models to its library for its clients (it was started "
                             "without --allow-model-import)")
    upload_ids = []
    for key in request_type.file_inputs:
        for item in _strings(values.get(key)):
            match = REFERENCE_PATTERN.match(item)
            if not match:
                raise InputError(f"{key}: {item[:80]!r} is not an upload; an input is 'upload:ID', the answer to "
                                 "PUT /v1/uploads")
            upload_ids.append(match.group(1))
    model_upload = None
    model = values.get("model") if "model" in fields else None
    if isinstance(model, str):
        match = REFERENCE_PATTERN.match(model)
        if match and settings.allow_model_uploads:
            model_upload = match.group(1)
            upload_ids.append(model_upload)
        elif match:
            raise ModelError("this server runs only the models of its library (GET /v1/models lists them); it was "
                             "started without --allow-model-uploads")
        elif not known_model(settings, model):
            raise ModelError(f"model {model[:80]!r} is not a model of this server's library (GET /v1/models lists "
                             "them); a server takes a model id, never a path")
    for key in request_type.file_outputs:
        names = _strings(values.get(key))
        for item in names:
            check_output_name(item, key)
        if len(set(names)) != len(names):
            raise OutputError(f"{key}: the same output name twice")
    return JobPlan(request_type, values, upload_ids, model_upload)


def _unpacked_model(folder: Path) -> Optional[Path]:
    """The model file an unpacked zip holds when it holds one model file (and its .json card) and nothing else."""
    if is_bundle(folder) or nnunet_results_folder(folder) is not None:
        return None
    entries = list(folder.iterdir())
    models = [path for path in entries if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES]
    if len(models) == 1 and all(path.is_file() and (path in models or path.suffix.lower() == ".json")
                                for path in entries):
        return models[0]
    return None


def _check_model_upload(path: Path) -> None:
    if path.is_dir() and not (is_bundle(path) or nnunet_results_folder(path) is not None):
        raise ModelError("a model upload is a zip of a MONAI bundle or nnU-Net results folder, or of one model file "
                         f"({', '.join(MODEL_SUFFIXES)}) with its .json card")


def server_folders(settings: ServerSettings, work: WorkDir) -> list[tuple[str, str]]:
    """The server's own folders outside a job's (its work folder, its model library) and what a client sees
    instead, for messages that name them (a library model's folder in a worker's error)."""
    with models_folder(settings.models_dir):
        library = store.models_dir()
    pairs = []
    for path, token in ((work.path, "<server work folder>"), (library, "<model library>")):
        for variant in dict.fromkeys((Path(path).absolute(), Path(path).resolve())):
            if len(variant.parts) > 1:  # never a bare root
                pairs.append((str(variant), token))
    return pairs


def build_job(settings: ServerSettings, plan: JobPlan, uploads: list[Upload], work: WorkDir, owner: str) -> Job:
    """The job's folder with its inputs (zips unpacked) and output folders, and its command line."""
    job_id = secrets.token_urlsafe(24)
    folder = work.jobs / job_id
    folder.mkdir(mode=0o700)
    try:
        (folder / "in").mkdir(mode=0o700)
        (folder / "out").mkdir(mode=0o700)
        paths: dict[str, Path] = {}
        replacements: list[tuple[str, str]] = []
        for upload in uploads:
            if upload.suffix == ".zip":
                root = folder / "in" / upload.id
                unpacked = extract_zip(upload.path, root, settings.max_unpacked_bytes)
                paths[upload.id] = _unpacked_model(unpacked) or unpacked
                replacements.append((str(root), f"upload:{upload.id}"))
            else:
                paths[upload.id] = folder / "in" / f"{upload.id}{upload.suffix}"
                try:
                    os.link(upload.path, paths[upload.id])
                except OSError:
                    shutil.copyfile(upload.path, paths[upload.id])
            replacements.append((str(paths[upload.id]), f"upload:{upload.id}"))
        values = dict(plan.values)
        request_type = plan.request_type
        for key in request_type.file_inputs:
            value = values.get(key)
            if isinstance(value, str):
                values[key] = str(paths[value[len("upload:"):]])
            elif value is not None:
                values[key] = tuple(str(paths[item[len("upload:"):]]) for item in value)
        if plan.model_upload is not None:
            _check_model_upload(paths[plan.model_upload])
            values["model"] = str(paths[plan.model_upload])
        for key in request_type.file_outputs:
            value = values.get(key)
            if value is None:
                continue
            place = folder / "out" / key
            place.mkdir(mode=0o700)
            replacements.append((f"{place}{os.sep}", f"file:{key}/"))
            values[key] = str(place / value) if isinstance(value, str) else tuple(str(place / v) for v in value)
        replacements.append((str(folder), "<job folder>"))
        replacements += server_folders(settings, work)
        try:
            argv = request_type(**values).argv()
        except (TypeError, ValueError) as error:
            raise InputError(f"{request_type.__name__}: {error}") from None
        replacements.sort(key=lambda pair: len(pair[0]), reverse=True)
        return Job(job_id, owner, request_type.__name__, argv, folder, replacements)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@dataclass
class Server:
    """What a running app holds (tests reach it as `app.state.meddl`)."""

    settings: ServerSettings
    keys: KeyRing
    work: WorkDir
    uploads: UploadStore
    jobs: JobService
    registry: dict[str, type[Request]]
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    preparing: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # jobs being built
    _preparing_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def submit(self, owner: str, data: Any) -> tuple[Job, int]:
        """Check, prepare and queue a job; the job and its position in the queue when it was queued. A job being
        prepared (its zips unpacked) counts against the key's limit as a queued one does."""
        plan = plan_job(self.settings, self.registry, data)
        with self._preparing_lock:
            if self.jobs.active_jobs(owner) + self.preparing[owner] >= self.settings.max_jobs_per_key:
                raise TooManyJobs(f"this key already has {self.settings.max_jobs_per_key} jobs queued or running, "
                                  "the server's limit per key: wait for one to finish")
            self.preparing[owner] += 1
        try:
            claimed = self.uploads.claim(owner, plan.upload_ids)
            try:
                job = build_job(self.settings, plan, claimed, self.work, owner)
                try:
                    position = self.jobs.submit(job)
                except BaseException:
                    shutil.rmtree(job.folder, ignore_errors=True)
                    raise
            except BaseException:
                self.uploads.unclaim(claimed)
                raise
        finally:
            with self._preparing_lock:
                self.preparing[owner] -= 1
                if self.preparing[owner] <= 0:
                    del self.preparing[owner]
        self.uploads.consume(claimed)
        return job, position

    def janitor(self, stop: threading.Event) -> None:
        """Remove what expired, a few times per time to live (at most every 30 s)."""
        period = max(0.2, min(self.settings.result_ttl_s / 4, 30.0))
        while not stop.wait(period):
            self.uploads.expire()
            self.jobs.expire()


def _error_body(error: MeddlError) -> dict[str, Any]:
    return {"detail": str(error), "kind": type(error).__name__, "exit_code": error.exit_code}


class Authenticate:
    """Pure ASGI middleware: every HTTP request needs `Authorization: Bearer <key>` of the keys file; otherwise
    401, before any route (unknown paths included) is looked at. The key's owner goes into the request state."""

    def __init__(self, app, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            await send({"type": "websocket.close", "code": 1008})
            return
        values = [value for name, value in scope.get("headers", []) if name.lower() == b"authorization"]
        entry = None
        if len(values) == 1:
            scheme, _, token = values[0].decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                entry = self.keys.match(token.strip())
        if entry is None:
            body = b'{"detail":"not authenticated"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"www-authenticate", b"Bearer")]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        state = scope.setdefault("state", {})
        state["owner"], state["key_name"] = entry.owner, entry.name
        await self.app(scope, receive, send)


def uvicorn_server(app, **options):
    """A uvicorn server for a MedDL app (uvicorn.Config's `options`): as soon as it begins to stop, the app's long
    polls return, so that clients see it stop at once rather than after the graceful-shutdown timeout."""
    try:
        import uvicorn
    except ImportError:
        raise ServerExtraMissing(MISSING_EXTRA) from None

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            app.state.meddl.stopping.set()
            await super().shutdown(sockets=sockets)

    return Server(uvicorn.Config(app, **options))


def create_app(settings: ServerSettings):
    """The FastAPI application of a MedDL server. It prepares (and locks) the work folder now; the workers start
    with the application (its lifespan) and everything is removed when it stops."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import FileResponse, JSONResponse
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import ClientDisconnect
    except ImportError:
        raise ServerExtraMissing(MISSING_EXTRA) from None

    keys = KeyRing(settings.key_file)
    work = WorkDir(settings.work_dir)
    try:
        uploads = UploadStore(work.uploads, settings.max_upload_bytes, settings.result_ttl_s)
        jobs = JobService(work, settings.workers, settings.max_jobs_per_key, settings.result_ttl_s,
                          worker_environment(settings.models_dir))
        server = Server(settings, keys, work, uploads, jobs, request_types())
    except BaseException:
        work.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app):
        stop = threading.Event()
        janitor = threading.Thread(target=server.janitor, args=(stop,), daemon=True, name="meddl-server-janitor")
        server.jobs.start()
        janitor.start()
        try:
            yield
        finally:
            server.stopping.set()
            stop.set()
            await run_in_threadpool(server.jobs.stop)
            janitor.join(timeout=5)
            work.close()

    app = FastAPI(title="MedDL server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.add_middleware(Authenticate, keys=keys)
    app.state.meddl = server

    def error(status: int, detail: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"detail": detail, **extra}, status_code=status)

    def refused(problem: MeddlError) -> JSONResponse:
        if isinstance(problem, TooManyJobs):
            return JSONResponse(_error_body(problem), status_code=429, headers={"Retry-After": "2"})
        if isinstance(problem, TooManyUploads):
            return JSONResponse(_error_body(problem), status_code=429, headers={"Retry-After": "10"})
        if isinstance(problem, UploadTooLarge):
            return JSONResponse(_error_body(problem), status_code=413, headers={"Connection": "close"})
        return JSONResponse(_error_body(problem), status_code=400)

    def not_found() -> JSONResponse:
        return error(404, "not found")

    def owner_of(request: Request) -> str:
        return request.state.owner

    def job_of(request: Request, job_id: str) -> Optional[Job]:
        return server.jobs.get(owner_of(request), job_id)

    @app.get("/v1/health")
    def health() -> dict:
        return {"meddl": __version__, "api": 1, "max_upload_bytes": settings.max_upload_bytes}

    @app.get("/v1/models")
    def models() -> dict:
        return {"models": model_list(settings)}

    @app.put("/v1/uploads")
    async def upload(request: Request):
        owner = owner_of(request)
        length = request.headers.get("content-length")
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            return error(400, "Content-Length is not a number")
        try:
            partial = server.uploads.open(owner, request.headers.get("x-meddl-suffix", ""), declared,
                                          MAX_PENDING_UPLOADS)
        except MeddlError as problem:
            return refused(problem)
        try:
            chunks = request.stream().__aiter__()
            while True:
                try:  # a client that stops sending (gone without closing) does not hold its partial file
                    chunk = await asyncio.wait_for(chunks.__anext__(), UPLOAD_IDLE_S)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    partial.discard()
                    return JSONResponse({"detail": f"the upload stalled: nothing arrived for {UPLOAD_IDLE_S:g} s",
                                         "kind": "InputError", "exit_code": 3}, status_code=408,
                                        headers={"Connection": "close"})
                if chunk:
                    partial.write(chunk)
            done = partial.finish()
        except ClientDisconnect:
            partial.discard()
            return error(400, "the client disconnected")
        except MeddlError as problem:
            partial.discard()
            return refused(problem)
        except BaseException:  # the server stopping, a full disk: nothing is left behind
            partial.discard()
            raise
        return JSONResponse({"upload": done.id, "size": done.size}, status_code=201)

    @app.delete("/v1/uploads/{upload_id}")
    def remove_upload(request: Request, upload_id: str):
        if not server.uploads.remove(owner_of(request), upload_id):
            return not_found()
        return {"upload": upload_id, "removed": True}

    @app.post("/v1/jobs")
    async def submit(request: Request):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JOB_BODY:
                return error(413, "the job's JSON is too large")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return error(400, "the body is not JSON", kind="InputError", exit_code=3)
        try:
            job, position = await run_in_threadpool(server.submit, owner_of(request), data)
        except MeddlError as problem:
            return refused(problem)
        return JSONResponse({"job": job.id, "state": "queued", "position": position}, status_code=202)

    @app.get("/v1/jobs/{job_id}")
    def status(request: Request, job_id: str):
        job = job_of(request, job_id)
        return not_found() if job is None else server.jobs.status(job)

    @app.get("/v1/jobs/{job_id}/events")
    async def events(request: Request, job_id: str, after: int = 0, wait: float = 0.0):
        job = job_of(request, job_id)
        if job is None:
            return not_found()
        if after < 0 or not math.isfinite(wait) or wait < 0:
            return error(400, "after and wait must be non-negative")
        deadline = asyncio.get_running_loop().time() + min(wait, MAX_WAIT_S)
        while True:
            found, following, state = server.jobs.events_after(job, after)
            if (found or state in FINISHED or server.stopping.is_set()
                    or asyncio.get_running_loop().time() >= deadline):
                return {"events": found, "next": following, "state": state}
            await asyncio.sleep(0.05)

    @app.delete("/v1/jobs/{job_id}")
    def cancel(request: Request, job_id: str):
        state = server.jobs.cancel(owner_of(request), job_id)
        return not_found() if state is None else {"job": job_id, "state": state}

    @app.get("/v1/jobs/{job_id}/result")
    def result(request: Request, job_id: str):
        job = job_of(request, job_id)
        if job is None:
            return not_found()
        if job.state != "done":
            return error(409, f"the job is {job.state}, not done", state=job.state)
        if job.released:
            return error(410, "the job's files were released", state=job.state)
        return {"result": job.result, "files": list(job.files)}

    @app.get("/v1/jobs/{job_id}/files/{path:path}")
    def file(request: Request, job_id: str, path: str):
        job = job_of(request, job_id)
        if job is None or job.state != "done" or job.released or path not in job.files:
            return not_found()
        target = job.folder / "out" / path
        if not target.is_file():
            return not_found()
        return FileResponse(target, media_type="application/octet-stream")

    @app.post("/v1/jobs/{job_id}/release")
    def release(request: Request, job_id: str):
        state = server.jobs.release(owner_of(request), job_id)
        if state is None:
            return not_found()
        if state not in FINISHED:
            return error(409, f"the job is {state}: cancel it with DELETE", state=state)
        return {"job": job_id, "state": state, "released": True}

    return app
