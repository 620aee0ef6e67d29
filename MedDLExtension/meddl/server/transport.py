"""HTTP between a client and a MedDL server: the connection, the JSON answers, and the errors they become.

Only the standard library (http.client, ssl). It never follows redirects and never reads proxy settings: the API
key goes only to the server named, only in the Authorization header, and no message it raises contains it. An
answer that is not the MedDL API (larger than MAX_ANSWER_BYTES, not JSON of the API's shape) is a ServerError;
a failure the server reports becomes the error class the local command would raise.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
import urllib.parse
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

from ..errors import DeviceError, InputError, MeddlError, ModelError, OutputError

CHUNK = 1 << 20
MAX_ANSWER_BYTES = 64 << 20  # an API answer (JSON) larger than this is not the MedDL API
ERROR_CLASSES = {kind.__name__: kind for kind in (MeddlError, InputError, ModelError, OutputError, DeviceError)}


class ServerError(MeddlError):
    """The server refused the client, or answered something that is not MedDL's API."""


class ServerUnavailable(ServerError):
    """The server cannot be reached, or stopped answering: the compute asked for is not available (exit 6, as an
    unavailable device or Ray cluster)."""

    exit_code = 6


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


def is_loopback(host: str) -> bool:
    """Whether `host` names this computer (localhost, 127.0.0.0/8, ::1): plain http stays on it."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Transport:
    """HTTP exchanges with one MedDL server (`ServerClient` adds the API on top).

    verify: True (the system's certificate authorities), the path of a CA certificate file (a server's own
    certificate), or False (no check: only for tests on loopback). timeout: seconds a single HTTP exchange may
    take.
    """

    def __init__(self, url: str, api_key: str, verify: Union[bool, str, Path] = True, timeout: float = 60.0) -> None:
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
        self._context: Optional[ssl.SSLContext] = None
        if self._https:
            if verify is False:
                self._context = ssl._create_unverified_context()  # noqa: S323 (asked for: tests on loopback)
            elif verify is True:
                self._context = ssl.create_default_context()
            else:
                self._context = ssl.create_default_context(cafile=str(verify))
        elif not is_loopback(self._host):  # stacklevel 3: the caller of ServerClient(...)
            warnings.warn(f"{self.url}: the API key and the images travel unencrypted (use https)", stacklevel=3)
        self._started = False  # whether the server answered once (its messages say "stopped answering" after)

    def _connection(self, timeout: Optional[float] = None) -> http.client.HTTPConnection:
        timeout = self.timeout if timeout is None else timeout
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        return {"Authorization": self._authorization, "Accept": "application/json", **(extra or {})}

    # ---- JSON exchanges

    def _call(self, method: str, path: str, payload: Any = None, expect: Iterable[int] = (200,),
              timeout: Optional[float] = None) -> Any:
        """Send `payload` as JSON; the answer, when its status is one of `expect` (else the refusal's error)."""
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        status, answer, headers = self._exchange(method, path, body, {"Content-Type": "application/json"}
                                                 if body is not None else None, timeout)
        if status not in tuple(expect):
            raise self._refusal(status, answer)
        return answer

    def _exchange(self, method: str, path: str, body: Optional[bytes] = None,
                  headers: Optional[dict[str, str]] = None, timeout: Optional[float] = None) -> tuple[int, Any, dict]:
        """One request: its status, its JSON answer and its headers (lower-case names)."""
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

    # ---- errors

    def _refusal(self, status: int, answer: Any, localize: Optional[Callable[[str], str]] = None) -> MeddlError:
        """The error for an answer that is not the one expected (`localize`: the server's tokens made local paths
        in its detail)."""
        detail = str(answer.get("detail", "")) if isinstance(answer, dict) else ""
        if localize is not None:
            detail = localize(detail)
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

    # ---- files

    def _put_file(self, path: str, source: Path, headers: dict[str, str]) -> tuple[int, Any]:
        """Stream a local file as a request's body: the status and the JSON answer."""
        connection = self._connection()
        try:
            connection.putrequest("PUT", self._base + path, skip_accept_encoding=True)
            for key, value in self._headers(headers).items():
                connection.putheader(key, value)
            connection.endheaders()
            sent_error = None
            try:
                with open(source, "rb") as stream:
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
        return response.status, self._json(data, response.status)

    def _get_file(self, path: str, sink: BinaryIO, name: str) -> None:
        """Stream an answer's body (the file `name`) into `sink`, an open local file."""
        connection = self._connection()
        try:
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
                        raise OutputError(f"cannot write {name.split('/')[-1]}: {error.strerror or error}") from None
            except (OSError, http.client.HTTPException) as error:
                raise self._unavailable(error) from None
            if expected is not None and (not expected.strip().isdigit() or received != int(expected)):
                raise ServerUnavailable(f"the MedDL server at {self.url} stopped answering while sending "
                                        f"{name} ({received} of {expected} bytes)")
        finally:
            connection.close()
