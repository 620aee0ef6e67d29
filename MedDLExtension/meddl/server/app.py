"""The MedDL server's HTTP API (v1): `create_app(settings)` builds the FastAPI application.

Every endpoint needs `Authorization: Bearer <key>`. A client uploads its input files (PUT /v1/uploads), submits
a worker request by name with its fields (POST /v1/jobs), follows the job's events, downloads the files it
wrote and releases it. The server builds the request dataclass itself (`plan` checks the job, `prepare` makes
its folder); `jobs` queues it and `worker` runs it. Interactive sessions (`sessions`, `session_routes`) keep a
client's promptable segmentation on one worker across its jobs. docs/SERVER.md describes the API.

FastAPI is imported inside the functions that need it (the `server` extra): the command line works without it.
This module deliberately has no `from __future__ import annotations`: FastAPI reads the handlers' annotations.
"""

import contextlib
import dataclasses
import math
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from .. import __version__
from ..errors import MeddlError
from ..protocol import Request
from .answers import answer, error, json_body, not_found, owner_of, refused
from .jobs import FINISHED, Job, JobService, TooManyJobs
from .keys import Authenticate, KeyRing
from .limits import PerKeyLimit
from .plan import JobPlan, plan_job, request_types
from .prepare import build_job
from .session_routes import add_session_routes
from .sessions import Session, SessionGone, SessionStore
from .settings import ServerSettings, model_list
from .uploads import PartialUpload, Upload, UploadStore
from .workdir import WorkDir
from .worker import worker_environment

MAX_WAIT_S = 30.0
POLL_FIRST_S, POLL_LAST_S = 0.004, 0.05  # a long poll looks at its job again after these pauses (doubling)
MAX_PENDING_UPLOADS = 256  # uploads per key not yet taken by a job
UPLOAD_IDLE_S = 120.0  # an upload that receives nothing for this long is dropped (408)
MISSING_EXTRA = 'the MedDL server needs FastAPI and uvicorn: pip install "meddl[server]"'


class ServerExtraMissing(MeddlError):
    """FastAPI or uvicorn is not installed."""

    exit_code = 2


@dataclass
class Server:
    """What a running app holds (tests reach it as `app.state.meddl`)."""

    settings: ServerSettings
    keys: KeyRing
    work: WorkDir
    uploads: UploadStore
    jobs: JobService
    registry: dict[str, type[Request]]
    sessions: SessionStore
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    job_limit: PerKeyLimit = dataclasses.field(init=False)  # jobs queued, running or being prepared, per key

    def __post_init__(self) -> None:
        limit = self.settings.max_jobs_per_key
        self.job_limit = PerKeyLimit(limit, self.jobs.active_jobs, lambda held: TooManyJobs(
            f"this key already has {limit} jobs queued or running, the server's limit per key: wait for one to "
            "finish"))

    @classmethod
    def open(cls, settings: ServerSettings) -> "Server":
        """A server's state: its keys, its (locked) work folder, uploads and jobs; the workers are not started."""
        keys = KeyRing(settings.key_file)
        work = WorkDir(settings.work_dir)
        try:
            uploads = UploadStore(work.uploads, settings.max_upload_bytes, settings.result_ttl_s)
            jobs = JobService(work, settings.workers, settings.max_jobs_per_key, settings.result_ttl_s,
                              worker_environment(settings.models_dir))
            registry = request_types()
            return cls(settings, keys, work, uploads, jobs, registry,
                       SessionStore(settings, work, uploads, jobs, registry))
        except BaseException:
            work.close()
            raise

    def submit(self, owner: str, data: Any) -> tuple[Job, int]:
        """Check, prepare and queue a job; the job and its position in the queue when it was queued. A job being
        prepared (its zips unpacked) counts against the key's limit as a queued one does. A job of an interactive
        session (`"session": ID`) takes the fields its session fixed."""
        plan = plan_job(self.settings, self.registry, data)
        session = None
        if data.get("session") is not None:
            session = self.sessions.for_job(owner, data["session"], plan, data.get("fields", {}))
        with self.job_limit.building(owner):
            claimed = self.uploads.claim(owner, plan.upload_ids)
            try:
                job, position = self._queue(plan, claimed, owner, session)
            except BaseException:
                self.uploads.unclaim(claimed)
                raise
        self.uploads.consume(claimed)
        return job, position

    def _queue(self, plan: JobPlan, claimed: list[Upload], owner: str, session: Optional[Session]) -> tuple[Job, int]:
        """The job's folder made and the job queued; a session's job only while its session is open."""
        with session.lock if session is not None else contextlib.nullcontext():
            if session is not None and session.closed:
                raise SessionGone("the session was closed")
            job = build_job(self.settings, plan, claimed, self.work, owner, session)
            try:
                position = self.jobs.submit(job)
            except BaseException:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise
            if session is not None:
                session.used = time.monotonic()
        return job, position

    def janitor(self, stop: threading.Event) -> None:
        """Remove what expired, a few times per time to live or session idle time (at most every 30 s)."""
        period = max(0.2, min(self.settings.result_ttl_s / 4, self.settings.session_idle_s / 4, 30.0))
        while not stop.wait(period):
            self.uploads.expire()
            self.jobs.expire()
            self.sessions.expire()


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
        from fastapi import FastAPI
    except ImportError:
        raise ServerExtraMissing(MISSING_EXTRA) from None

    server = Server.open(settings)
    app = FastAPI(title="MedDL server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_lifespan(server))
    app.add_middleware(Authenticate, keys=server.keys)
    app.state.meddl = server
    _add_server_routes(app, server)
    _add_upload_routes(app, server)
    _add_job_routes(app, server)
    _add_result_routes(app, server)
    add_session_routes(app, server.sessions)
    return app


def _lifespan(server: Server):
    """The app's lifespan: the workers and the janitor run while it does; the work folder is emptied after."""
    from starlette.concurrency import run_in_threadpool

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
            server.work.close()

    return lifespan


# ---- the routes


def _add_server_routes(app, server: Server) -> None:
    """What a client asks the server itself: its version and limits, its model library."""

    @app.get("/v1/health")
    def health() -> dict:
        return {"meddl": __version__, "api": 1, "max_upload_bytes": server.settings.max_upload_bytes}

    @app.get("/v1/models")
    def models() -> dict:
        return {"models": model_list(server.settings)}


def _add_upload_routes(app, server: Server) -> None:
    """Uploads: streamed to disk, bounded; removed by their key or when a job takes them."""
    from fastapi import Request
    from starlette.requests import ClientDisconnect

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
            if not await _receive(request, partial):
                partial.discard()
                return error(408, f"the upload stalled: nothing arrived for {UPLOAD_IDLE_S:g} s", kind="InputError",
                             exit_code=3, headers={"Connection": "close"})
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
        return answer({"upload": done.id, "size": done.size}, 201)

    @app.delete("/v1/uploads/{upload_id}")
    def remove_upload(request: Request, upload_id: str):
        if not server.uploads.remove(owner_of(request), upload_id):
            return not_found()
        return {"upload": upload_id, "removed": True}


async def _receive(request, partial: PartialUpload) -> bool:
    """Write a request's body into `partial`; False when the client stopped sending (gone without closing) for
    UPLOAD_IDLE_S, so that it does not hold its partial file."""
    import asyncio  # the server's own: `meddl` commands that import this module never start an event loop

    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), UPLOAD_IDLE_S)
        except StopAsyncIteration:
            return True
        except asyncio.TimeoutError:
            return False
        if chunk:
            partial.write(chunk)


def _add_job_routes(app, server: Server) -> None:
    """Jobs: submitted, followed (long polls of their events), cancelled."""
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    @app.post("/v1/jobs")
    async def submit(request: Request):
        try:
            data = await json_body(request)
            job, position = await run_in_threadpool(server.submit, owner_of(request), data)
        except MeddlError as problem:
            return refused(problem)
        return answer({"job": job.id, "state": "queued", "position": position}, 202)

    @app.get("/v1/jobs/{job_id}")
    def status(request: Request, job_id: str):
        job = server.jobs.get(owner_of(request), job_id)
        return not_found() if job is None else server.jobs.status(job)

    @app.get("/v1/jobs/{job_id}/events")
    async def events(request: Request, job_id: str, after: int = 0, wait: float = 0.0):
        job = server.jobs.get(owner_of(request), job_id)
        if job is None:
            return not_found()
        if after < 0 or not math.isfinite(wait) or wait < 0:
            return error(400, "after and wait must be non-negative")
        import asyncio  # see _receive

        deadline = asyncio.get_running_loop().time() + min(wait, MAX_WAIT_S)
        pause = POLL_FIRST_S  # short at first: an interactive job's next event often follows within milliseconds
        while True:
            found, following, state = server.jobs.events_after(job, after)
            if (found or state in FINISHED or server.stopping.is_set()
                    or asyncio.get_running_loop().time() >= deadline):
                return {"events": found, "next": following, "state": state}
            await asyncio.sleep(pause)
            pause = min(2 * pause, POLL_LAST_S)

    @app.delete("/v1/jobs/{job_id}")
    def cancel(request: Request, job_id: str):
        state = server.jobs.cancel(owner_of(request), job_id)
        return not_found() if state is None else {"job": job_id, "state": state}


def _add_result_routes(app, server: Server) -> None:
    """A finished job's result and files, and their release."""
    from fastapi import Request
    from fastapi.responses import FileResponse

    @app.get("/v1/jobs/{job_id}/result")
    def result(request: Request, job_id: str):
        job = server.jobs.get(owner_of(request), job_id)
        if job is None:
            return not_found()
        if job.state != "done":
            return error(409, f"the job is {job.state}, not done", state=job.state)
        if job.released:
            return error(410, "the job's files were released", state=job.state)
        return {"result": job.result, "files": list(job.files)}

    @app.get("/v1/jobs/{job_id}/files/{path:path}")
    def file(request: Request, job_id: str, path: str):
        job = server.jobs.get(owner_of(request), job_id)
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
