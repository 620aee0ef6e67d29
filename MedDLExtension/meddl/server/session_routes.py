"""The HTTP routes of interactive sessions (`sessions`): open one, look at it, close it. Its jobs go through
POST /v1/jobs with `"session": ID`. docs/SERVER.md describes them.

No `from __future__ import annotations`: FastAPI reads the handlers' annotations.
"""

from ..errors import MeddlError
from .answers import answer, json_body, not_found, owner_of, refused
from .sessions import SessionStore


def add_session_routes(app, sessions: SessionStore) -> None:
    """POST /v1/sessions, GET and DELETE /v1/sessions/{id}."""
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    idle_timeout_s = sessions.settings.session_idle_s

    @app.post("/v1/sessions")
    async def open_session(request: Request):
        try:
            data = await json_body(request)
            session = await run_in_threadpool(sessions.open, owner_of(request), data)
        except MeddlError as problem:
            return refused(problem)
        return answer(session.status(idle_timeout_s), 201)

    @app.get("/v1/sessions/{session_id}")
    def session_status(request: Request, session_id: str):
        session = sessions.get(owner_of(request), session_id)
        return not_found() if session is None else session.status(idle_timeout_s)

    @app.delete("/v1/sessions/{session_id}")
    def close_session(request: Request, session_id: str):
        if not sessions.close(owner_of(request), session_id):
            return not_found()
        return {"session": session_id, "closed": True}
