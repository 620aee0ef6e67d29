"""A job's outputs, committed together: checked before the work, staged privately, renamed into place at the end.

Every command writes through an `OutputSet`. Each output path is checked when it is added (its folder
exists and is writable, its type is supported, it is not one of the job's inputs, no two outputs are one
file), so a bad path fails before minutes of work. Files are written under their final names into a
private staging folder created exclusively beside them (`tempfile.mkdtemp`: a planted link is never
followed, and a header/data pair such as .nhdr/.raw.gz keeps the data-file name it will have). `commit`
renames them all into place while holding a lock on each target folder, so two jobs writing the same
outputs leave the complete set of one of them. A failed or cancelled job leaves nothing, and staging
folders of killed processes are removed by the next job writing into the same folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

from .errors import OutputError

STAGING_PREFIX = ".meddl-"
MAX_NAME_BYTES = 255  # the file-name limit of every common file system


def check_writable(path: Path) -> None:
    """Raise OutputError early when `path` cannot be created."""
    if len(path.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise OutputError(f"cannot write {path.name[:40]}...: the file name is longer than {MAX_NAME_BYTES} bytes")
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {folder}")


def _same_file(a: Path, b: Path) -> bool:
    """The same file by identity (links and different spellings included), not by string."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (when unsure: yes, so that its files are left alone)."""
    if sys.platform.startswith("win"):  # os.kill(pid, 0) would terminate it there
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but is not ours
    return True


def clean_stale_staging(folder: Path) -> None:
    """Remove what killed MedDL processes left in `folder`: staging folders and the temporary
    `.NAME.partial-PID` / `.NAME.old-PID` files and folders of earlier versions."""
    patterns = (f"{STAGING_PREFIX}*", ".*.partial-*", ".*.old-*")
    for pattern in patterns:
        for leftover in folder.glob(pattern):
            pid = leftover.name[len(STAGING_PREFIX):].split("-")[0] if leftover.name.startswith(STAGING_PREFIX) \
                else leftover.name.rsplit("-", 1)[-1].split(".")[0]
            if pid.isdigit() and not process_alive(int(pid)) and not leftover.is_symlink():
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder while outputs are renamed into it (POSIX; elsewhere none)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


class OutputSet:
    """The outputs of one job; use as a context manager, `add` every path first, `commit` at the end."""

    def __init__(self, inputs: Iterable[Optional[str | Path]] = ()) -> None:
        self._inputs = [Path(path) for path in inputs if path]
        self._targets: list[Path] = []  # final paths of the outputs, in the order they are committed
        self._folders: dict[Path, bool] = {}  # final path of a folder output -> whether it may replace one
        self._staging: dict[Path, Path] = {}  # target folder -> its private staging folder
        self._inside: set[Path] = set()  # files inside an output folder

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc_info) -> None:
        for staging in self._staging.values():
            shutil.rmtree(staging, ignore_errors=True)
        self._staging.clear()

    def add(self, path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
        """Check and declare an output file; returns it as a Path."""
        path = Path(path)
        if suffixes and not path.name.lower().endswith(suffixes):
            raise OutputError(f"unsupported output file type for {path}: use one of {', '.join(suffixes)}")
        if path.parent in self._folders:  # a file inside an output folder: written in the folder's staging
            self._check_distinct(path)
            self._inside.add(path)
            return path
        check_writable(path)
        self._check_distinct(path)
        self._targets.append(path)
        return path

    def add_folder(self, path: str | Path, replace: bool = False) -> Path:
        """Declare an output folder, built whole in staging; it must be new or empty unless `replace`."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise OutputError(f"cannot create folder {path}: a file is there")
        if path.is_dir() and any(path.iterdir()) and not replace:
            raise OutputError(f"output folder {path} is not empty; choose a new folder")
        check_writable(path if not path.is_dir() else path / "_")
        self._check_distinct(path)
        self._targets.append(path)
        self._folders[path] = replace
        return path

    def _check_distinct(self, path: Path) -> None:
        for source in self._inputs:
            if _same_file(path, source):
                raise OutputError(f"output {path} is the input {source}: inputs are never overwritten; "
                                  "choose another output name")
        for other in (*self._targets, *self._inside):
            if _same_file(path, other):
                raise OutputError(f"two outputs are the same file: {path}")

    def staged(self, path: str | Path) -> Path:
        """Where to write the output `path` now (declared by `add` first, or checked now)."""
        path = Path(path)
        if path not in self._targets and path not in self._inside:
            self.add(path)
        if path in self._inside:
            return self.staged(path.parent) / path.name
        folder = path.parent.resolve()
        if folder not in self._staging:
            clean_stale_staging(folder)
            try:
                self._staging[folder] = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
            except OSError as error:
                raise OutputError(f"cannot write in {folder}: {error.strerror or error}") from None
        return self._staging[folder] / path.name

    def commit(self) -> None:
        """Rename every staged output into place, all under the target folders' locks."""
        missing = [str(path) for path in self._targets if not self.staged(path).exists()]
        if missing:
            raise OutputError(f"internal error: output(s) {', '.join(missing)} were not written")
        with contextlib.ExitStack() as locks:
            for folder in sorted(self._staging):
                locks.enter_context(_folder_lock(folder))
            for folder, staging in self._staging.items():
                declared = {path.name for path in self._targets if path.parent.resolve() == folder}
                # companions first (a header's data file), then the declared outputs in order
                names = [p.name for p in staging.iterdir() if p.name not in declared]
                names += [path.name for path in self._targets if path.parent.resolve() == folder]
                for name in names:
                    self._move(staging / name, folder / name, staging)

    def _move(self, source: Path, target: Path, staging: Path) -> None:
        try:
            if source.is_dir() and target.is_dir():
                if any(target.iterdir()) and not self._folders.get(target, False):
                    target.rmdir()  # raises: the folder filled up while the job ran
                old = staging / f"{target.name}.old"
                os.replace(target, old)
            os.replace(source, target)
        except OSError as error:
            raise OutputError(f"cannot write {target}: {error.strerror or error}") from None


@contextlib.contextmanager
def joined(outputs: Optional[OutputSet]) -> Iterator[OutputSet]:
    """The caller's output set (committed by the caller), or a new one committed when the block succeeds."""
    if outputs is not None:
        yield outputs
        return
    with OutputSet() as own:
        yield own
        own.commit()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield where to write `path`; it appears at `path` only if the block succeeds."""
    with OutputSet() as outputs:
        yield outputs.staged(outputs.add(path))
        outputs.commit()


@contextlib.contextmanager
def staged_folder(out: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a new folder that becomes `out` only on success.

    `out` must be absent or empty, unless `replace` is set (a checkpoint rewritten as training improves).
    """
    with OutputSet() as outputs:
        staging = outputs.staged(outputs.add_folder(out, replace))
        staging.mkdir()
        yield staging
        outputs.commit()
