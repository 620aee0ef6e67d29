"""API keys of a MedDL server: a file of `NAME:SHA256HEX` lines, the hash of each key, never a key itself.

`meddl serve-key NAME --api-key-file F` makes a key (`secrets.token_urlsafe(32)`: 256 random bits), appends
its hash line to F (created with mode 0600) and prints the key once. The server compares the hash of a
presented key with every stored hash in constant time (`hmac.compare_digest`, no early exit), and reads the
file again when it changes, so that removing a line revokes that key without a restart. `Authenticate` asks
every HTTP request of the API for one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import MeddlError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
LINE_PATTERN = re.compile(r"^([^:\s]+):([0-9a-f]{64})$")
MAX_KEY_CHARS = 512  # a presented key longer than this is refused before it is hashed


class KeyFileError(MeddlError):
    """The keys file is missing, unreadable or malformed."""

    exit_code = 2


@dataclass(frozen=True)
class KeyEntry:
    """One key of the file: the client's name and the SHA-256 of its key."""

    name: str
    digest: bytes

    @property
    def owner(self) -> str:
        """What the server files jobs and uploads under: the key's hash, unique per key (never the key)."""
        return self.digest.hex()


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise KeyFileError(f"key name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-' (starting with a "
                           "letter or digit)")
    return name


def read_keys(path: Path) -> list[KeyEntry]:
    """The keys of a keys file; blank lines and `#` comments are skipped; any other malformed line is an error
    (a file that might hold a key itself instead of its hash is refused, never half-used)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"keys file {path} does not exist: create a key with `meddl serve-key NAME "
                           f"--api-key-file {path}`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"cannot read keys file {path}: {getattr(error, 'strerror', None) or error}") from None
    entries, names = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE_PATTERN.match(line)
        if not match or not NAME_PATTERN.match(match.group(1)):
            raise KeyFileError(f"keys file {path}, line {number}: expected NAME:SHA256HEX (the hash of a key, as "
                               "`meddl serve-key` writes it)")
        name = match.group(1)
        if name in names:
            raise KeyFileError(f"keys file {path}, line {number}: the name {name!r} is used twice")
        names.add(name)
        entries.append(KeyEntry(name, bytes.fromhex(match.group(2))))
    return entries


def add_key(name: str, path: Path) -> str:
    """A new key for `name`: its hash line is appended to `path` (created 0600); the key is returned, never stored."""
    check_name(name)
    path = Path(path)
    existing = read_keys(path) if path.exists() else []
    if any(entry.name == name for entry in existing):
        raise KeyFileError(f"keys file {path} already has a key named {name!r}: remove its line first, or choose "
                           "another name")
    key = secrets.token_urlsafe(32)
    line = f"{name}:{hash_key(key).hex()}\n"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as error:
        raise KeyFileError(f"cannot write keys file {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "a", encoding="utf-8") as stream:
        if stream.tell() > 0:
            with open(path, "rb") as existing_file:
                existing_file.seek(-1, os.SEEK_END)
                if existing_file.read(1) != b"\n":
                    stream.write("\n")
        stream.write(line)
    return key


class KeyRing:
    """The keys a server accepts, read again from the file whenever it changes (revoking needs no restart).

    A file that turns unreadable or malformed while the server runs accepts no key until it is fixed: the
    server fails closed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: Optional[tuple] = None
        self._entries = read_keys(self.path)
        self._stamp = self._file_stamp()
        if not self._entries:
            raise KeyFileError(f"keys file {self.path} holds no key: create one with `meddl serve-key NAME "
                               f"--api-key-file {self.path}`")

    def _file_stamp(self) -> Optional[tuple]:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return (status.st_mtime_ns, status.st_size, status.st_ino)

    def _current(self) -> list[KeyEntry]:
        stamp = self._file_stamp()
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._entries = read_keys(self.path)
                except KeyFileError:
                    self._entries = []  # fail closed until the file is fixed
                self._stamp = stamp
            return self._entries

    def match(self, presented: str) -> Optional[KeyEntry]:
        """The entry whose hash is the presented key's, compared with every entry (no early exit), or None."""
        entries = self._current()
        if not presented or len(presented) > MAX_KEY_CHARS:
            return None
        digest = hash_key(presented)
        found = None
        for entry in entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found


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
        state["owner"] = entry.owner
        await self.app(scope, receive, send)
