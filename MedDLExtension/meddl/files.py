"""All-or-nothing file output: write to a temporary sibling, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def check_writable(path: Path) -> None:
    """Raise OutputError early when `path` cannot be created."""
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {folder}")


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    check_writable(path)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def replace_folder(staging: Path, target: Path) -> None:
    """Move `staging` to `target`, replacing a folder already there (kept until the new one is in place)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a new folder beside `out`; it becomes `out` only on success.

    `out` must be absent or empty, unless `replace` is set (a checkpoint rewritten as training improves).
    """
    out = Path(out)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        yield staging
        if out.exists() and not replace:
            out.rmdir()
        replace_folder(staging, out)
    except OSError as error:
        raise OutputError(f"cannot write {out}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
