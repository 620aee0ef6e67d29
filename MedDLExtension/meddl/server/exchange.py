"""One run's exchange of names between a client and a server: the client's local paths and the server's tokens.

The server never sees a client's paths nor shows its own: an input travels as `upload:ID`, an output as a plain
name whose files come back as `file:<field>/<relative path>`. `Exchange` maps them back to local paths (in
messages, results and small text outputs), and refuses what would reach outside the job's own files: a listed
file not inside an output, a result naming a local file that is neither an input nor an output.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from pathlib import Path

from .hiding import map_strings
from .transport import ServerError

REWRITTEN_SUFFIXES = (".csv", ".json", ".txt")  # small text outputs whose paths the server hides and we restore
MAX_REWRITTEN_BYTES = 16 << 20

WINDOWS_RESERVED = re.compile(r'[<>:"|?*\x00-\x1f]|[. ]$')  # drive letters, streams, names Windows changes


def _plain_name(part: str) -> bool:
    """Whether `part` is one plain file or folder name here: not empty, `.` or `..`, no separator or NUL (nor,
    on Windows, a drive, a stream or a name that Windows would shorten)."""
    if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
        return False
    return not (os.name == "nt" and WINDOWS_RESERVED.search(part))


class Exchange:
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


def restore_paths(path: Path, name: str, exchange: Exchange) -> None:
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
            changed = json.dumps(map_strings(json.loads(text), exchange.localize), indent=1)
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

