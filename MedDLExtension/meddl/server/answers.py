"""The HTTP answers of the MedDL server's routes (`app`, `session_routes`): JSON bodies, refusals with the MedDL
error's kind and exit code, and the bounded reading of a JSON request body.

FastAPI is imported inside the functions (the `server` extra); no `from __future__ import annotations`, as in
`app`.
"""

import json
from typing import Any, Optional

from ..errors import InputError, MeddlError
from .jobs import TooManyJobs
from .sessions import SessionGone, TooManySessions
from .uploads import TooManyUploads, UploadTooLarge

MAX_JSON_BODY = 1 << 20  # a job's or a session's JSON


class BodyTooLarge(MeddlError):
    """A JSON body above MAX_JSON_BODY (HTTP 413)."""


def answer(content: dict, status: int = 200, headers: Optional[dict[str, str]] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(content, status_code=status, headers=headers)


def error(status: int, detail: str, headers: Optional[dict[str, str]] = None, **extra: Any):
    return answer({"detail": detail, **extra}, status, headers)


def error_body(problem: MeddlError) -> dict[str, Any]:
    return {"detail": str(problem), "kind": type(problem).__name__, "exit_code": problem.exit_code}


def refused(problem: MeddlError):
    """The answer to a request the server refuses: 429 for a key at its limit, 413 for an upload too large, 404
    for a session that is not (or no longer) there, else 400; with the error's kind and exit code."""
    if isinstance(problem, (TooManyJobs, TooManySessions)):
        return answer(error_body(problem), 429, {"Retry-After": "2"})
    if isinstance(problem, TooManyUploads):
        return answer(error_body(problem), 429, {"Retry-After": "10"})
    if isinstance(problem, UploadTooLarge):
        return answer(error_body(problem), 413, {"Connection": "close"})
    if isinstance(problem, BodyTooLarge):
        return answer(error_body(problem), 413)
    if isinstance(problem, SessionGone):
        return answer(error_body(problem), 404)
    return answer(error_body(problem), 400)


def not_found():
    return error(404, "not found")


def owner_of(request) -> str:
    """The owner of the key a request came with (`Authenticate` put it there)."""
    return request.state.owner


async def json_body(request) -> Any:
    """A request's JSON body, read up to MAX_JSON_BODY (BodyTooLarge beyond, InputError when it is not JSON)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise BodyTooLarge("the JSON body is too large")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InputError("the body is not JSON") from None
