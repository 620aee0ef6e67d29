"""Interactive sessions on a MedDL server: one client's promptable segmentation kept warm by one worker.

A worker remembers an interactive session (`meddl.cli.interact`) by its model, its image file's path, size and
modification time, its seed labels, device and seed, and then runs only the new prompt of the next request. A
session here makes that hold across a client's requests: it is opened (POST /v1/sessions) with the fields its
request type fixes (`session_fields`: for `InteractRequest` the image, model, seed labels, device and seed), whose
files are uploaded once and stay in `sessions/<id>/in` at unchanged paths and times; its jobs send only what
changes (the prompts, the output) and all run on the worker slot the session was given (`JobService`).

A session is identified by a server-made id (192 random bits) and belongs to the key that opened it: another key,
even with the id, sees 404. It ends when its client closes it (DELETE), after `session_idle_s` without a job
(how a vanished client is noticed: requests are separate HTTP exchanges, so a disconnect is not seen), or when
the server stops; its worker is then told to forget it and its files are removed.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError, MeddlError
from ..protocol import Request
from .jobs import JobService
from .limits import PerKeyLimit
from .plan import JobPlan, RequestRefused, plan_job
from .prepare import place_inputs, set_inputs
from .settings import ServerSettings
from .uploads import UploadStore
from .workdir import WorkDir

MAX_SESSIONS_PER_KEY = 8


class SessionGone(MeddlError):
    """No open session of this key has that id: it was closed, it expired, or it never was (HTTP 404)."""


class TooManySessions(MeddlError):
    """A key already has its limit of open sessions (HTTP 429)."""


@dataclass
class Session:
    """One open session: its fixed fields (server paths), its files and the worker slot that keeps it."""

    id: str
    owner: str
    request_type: type[Request]
    folder: Path
    values: dict[str, Any]
    files: list[str]  # the inputs the worker remembers it by (told to forget them when it ends)
    replacements: list[tuple[str, str]]  # its files' paths -> the `upload:ID` the client knows them by
    slot: int
    used: float = field(default_factory=time.monotonic)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while a job of it is being queued

    def status(self, idle_timeout_s: float) -> dict[str, Any]:
        return {"session": self.id, "request": self.request_type.__name__,
                "idle_s": round(time.monotonic() - self.used, 3), "idle_timeout_s": idle_timeout_s}


def session_fields(request_type: type[Request]) -> tuple[str, ...]:
    """The fields a session of this request type fixes (none: the request has no sessions)."""
    return getattr(request_type, "session_fields", ())


class SessionStore:
    """Every key's open sessions; thread-safe."""

    def __init__(self, settings: ServerSettings, work: WorkDir, uploads: UploadStore, jobs: JobService,
                 registry: dict[str, type[Request]]) -> None:
        self.settings, self.work, self.uploads, self.jobs, self.registry = settings, work, uploads, jobs, registry
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._limit = PerKeyLimit(MAX_SESSIONS_PER_KEY, self._held, lambda held: TooManySessions(
            f"this key has {held} open sessions, the server's limit: close one"))

    def _held(self, owner: str) -> int:
        with self._lock:
            return sum(1 for session in self._sessions.values() if session.owner == owner)

    def open(self, owner: str, data: Any) -> Session:
        """Check a session's fields, take its uploads into its folder and give it a worker slot."""
        plan = plan_job(self.settings, self.registry, data)
        fixed = session_fields(plan.request_type)
        if not fixed:
            raise RequestRefused(f"{plan.request_type.__name__} has no interactive sessions")
        extra = sorted(set(data.get("fields", {})) - set(fixed))
        if extra:
            raise InputError(f"a session is opened with {', '.join(fixed)}; {', '.join(extra)} go with each job")
        missing = [item.name for item in dataclasses.fields(plan.request_type) if item.name in fixed
                   and item.default is dataclasses.MISSING and item.name not in plan.values]
        if missing:
            raise InputError(f"a session of {plan.request_type.__name__} needs {', '.join(missing)}")
        with self._limit.building(owner):
            session = self._build(owner, plan)
            with self._lock:
                self._sessions[session.id] = session
            return session

    def _build(self, owner: str, plan: JobPlan) -> Session:
        claimed = self.uploads.claim(owner, plan.upload_ids)
        session_id = secrets.token_urlsafe(24)
        folder = self.work.sessions / session_id
        try:
            folder.mkdir(mode=0o700)
            (folder / "in").mkdir(mode=0o700)
            replacements: list[tuple[str, str]] = []
            paths = place_inputs(self.settings, claimed, folder, replacements)
            values = dict(plan.values)
            set_inputs(values, plan, paths)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            self.uploads.unclaim(claimed)
            raise
        self.uploads.consume(claimed)
        files = [str(values[key]) for key in plan.request_type.file_inputs
                 if key in session_fields(plan.request_type) and isinstance(values.get(key), str)]
        return Session(session_id, owner, plan.request_type, folder, values, files, replacements,
                       self.jobs.assign_slot())

    def get(self, owner: str, session_id: Any) -> Optional[Session]:
        """The open session, if it is this key's (others' sessions do not exist for it)."""
        with self._lock:
            return self._find(owner, session_id)

    def _find(self, owner: str, session_id: Any) -> Optional[Session]:
        """Under the lock: the open session of this key with that id."""
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        return session if session is not None and session.owner == owner else None

    def for_job(self, owner: str, session_id: Any, plan: JobPlan, given: Any) -> Session:
        """The session a job names, checked: the same request, none of the fields the session fixes."""
        session = self.get(owner, session_id)
        if session is None:
            raise SessionGone("this key has no open session with that id (it was closed or it expired)")
        if plan.request_type is not session.request_type:
            raise InputError(f"the session runs {session.request_type.__name__}, not {plan.request_type.__name__}")
        fixed = sorted(set(given) & set(session_fields(session.request_type))) if isinstance(given, dict) else []
        if fixed:
            raise InputError(f"{', '.join(fixed)}: fixed when the session was opened (a job of a session sends the "
                             "other fields)")
        session.used = time.monotonic()  # not idle while its job is being prepared
        return session

    def close(self, owner: str, session_id: str) -> bool:
        """End a session of this key: its jobs cancelled, its worker told, its files removed; False when none."""
        with self._lock:
            session = self._find(owner, session_id)
            if session is None:
                return False
            del self._sessions[session_id]
        self._end(session)
        return True

    def expire(self, now: Optional[float] = None) -> int:
        """End the sessions idle (no job queued or running, none ended) for longer than `session_idle_s`."""
        now = time.monotonic() if now is None else now
        idle = []
        with self._lock:
            for session in list(self._sessions.values()):
                active, last = self.jobs.session_activity(session.id)
                if not active and now - max(session.used, last or 0.0) > self.settings.session_idle_s:
                    idle.append(self._sessions.pop(session.id))
        for session in idle:
            self._end(session)
        return len(idle)

    def _end(self, session: Session) -> None:
        with session.lock:
            session.closed = True
        self.jobs.cancel_session(session.owner, session.id)
        self.jobs.free_session(session.slot, session.files)
        shutil.rmtree(session.folder, ignore_errors=True)

    def count(self) -> int:
        with self._lock:
            return len(self._sessions)
