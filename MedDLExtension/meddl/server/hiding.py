"""Server paths never reach a client: they are replaced by the tokens a client maps back to its own paths.

In events, errors, results and small text outputs, a path inside a job's folder becomes
`file:<field>/<relative path>` (an output) or `upload:<id>...` (an input), and the server's own folders become
`<server work folder>` and `<model library>`. A job's replacements are made with its folder (`prepare`);
`Job.hide_paths` applies them to a string, `map_strings` to JSON data and `hide_paths_in_file` to a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` (JSON data) with `change` applied to every string in it."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: map_strings(item, change) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(item, change) for item in value]
    return value


TEXT_SUFFIXES = (".csv", ".json", ".txt")  # small text outputs may name the job's files: their paths are hidden
MAX_TEXT_BYTES = 16 << 20


def hide_paths_in_file(path: Path, hide: Callable[[str], str]) -> None:
    """Replace the server's paths in a small text output (a CSV table of inputs, a JSON report) by the tokens the
    client maps back; JSON stays valid (its strings are changed, not its text)."""
    if not path.name.lower().endswith(TEXT_SUFFIXES) or path.stat().st_size > MAX_TEXT_BYTES:
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if path.name.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return
        changed_data = map_strings(data, hide)
        changed = text if changed_data == data else json.dumps(changed_data, indent=1)
    else:
        changed = hide(text)
    if changed != text:
        temporary = path.with_name(f".meddl-rewrite-{path.name}")
        temporary.write_text(changed, encoding="utf-8", newline="")
        os.replace(temporary, path)
