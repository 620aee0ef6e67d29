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
    try:
        _check_writable(path)
    except OSError as error:  # a path the file system cannot even look up (too long, a bad component)
        raise OutputError(f"cannot write {str(path)[:80]}...: {error.strerror or error}") from None


def _check_writable(path: Path) -> None:
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
    """The same file by identity (links and different spellings included), not by string; for a folder `b`,
    anything inside it too (an output never goes into an input folder, such as a DICOM series or a bundle)."""
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
        resolved, other = a.resolve(), b.resolve()
    except OSError:
        return False
    return resolved == other or (b.is_dir() and resolved.is_relative_to(other))


HEADER_SUFFIXES = (".nhdr", ".mhd")


def data_files_of(header: Path, planned: bool = False) -> list[Path]:
    """The data files a .nhdr/.mhd header names; `planned`: those ITK will write beside a new header."""
    name = header.name.lower()
    if not name.endswith(HEADER_SUFFIXES):
        return []
    stem = header.name[: -len(".nhdr")] if name.endswith(".nhdr") else header.name[: -len(".mhd")]
    if planned or not header.is_file():
        endings = (".raw.gz", ".raw") if name.endswith(".nhdr") else (".zraw", ".raw")
        return [header.with_name(stem + ending) for ending in endings]
    try:
        with open(header, "rb") as stream:
            text = stream.read(65536)
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        key, _, value = line.partition(b"=" if line.startswith(b"ElementDataFile") else b":")
        if key.strip().lower() in (b"data file", b"datafile", b"elementdatafile") and value.strip():
            value = value.strip().decode("utf-8", "replace")
            if value.upper() not in ("LOCAL", "LIST") and "%" not in value:
                found.append(header.parent / value.split()[0])
    return found


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
        """`inputs`: every file or folder the job reads (images, a header's data files, the model and its card):
        no output may be one of them or lie inside an input folder."""
        self._inputs = [Path(path) for path in inputs if path]
        self._inputs += [data for path in self._inputs for data in data_files_of(path)]
        self._targets: list[Path] = []  # final paths of the outputs, in the order they are committed
        self._folders: dict[Path, bool] = {}  # final path of a folder output -> whether it may replace one
        self._staging: dict[Path, Path] = {}  # target folder -> its private staging folder
        self._inside: set[Path] = set()  # files inside an output folder
        self._companions: list[Path] = []  # data files ITK writes beside header outputs

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
        for data in data_files_of(path, planned=True):  # the data file ITK writes beside a header is an output
            self._check_distinct(data, f"{path}'s data file {data.name}")
            self._companions.append(data)
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

    def _check_distinct(self, path: Path, what: str = "") -> None:
        what = what or f"output {path}"
        for source in self._inputs:
            if _same_file(path, source):
                raise OutputError(f"{what} is (or is inside) the input {source}: inputs are never overwritten; "
                                  "choose another output name or folder")
        for other in (*self._targets, *self._inside, *self._companions):
            if _same_file(path, other) or _same_file(other, path):
                raise OutputError(f"two outputs are the same file: {what} and {other}")

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
            done: list[tuple[Path, Path, Optional[Path]]] = []  # (staged, target, previous kept in staging)
            try:
                for folder, staging in self._staging.items():
                    declared = {path.name for path in self._targets if path.parent.resolve() == folder}
                    # companions first (a header's data file), then the declared outputs in order
                    names = [p.name for p in staging.iterdir() if p.name not in declared and ".previous-" not in
                             p.name]
                    names += [path.name for path in self._targets if path.parent.resolve() == folder]
                    for name in names:
                        done.append(self._move(staging / name, folder / name, staging))
            except OSError as error:
                self._roll_back(done)
                raise OutputError(f"cannot write {folder / name}: {error.strerror or error}; nothing was "
                                  "changed") from None

    def _move(self, source: Path, target: Path, staging: Path) -> tuple[Path, Path, Optional[Path]]:
        """Rename `source` to `target`, keeping what was there in staging until the whole commit succeeds."""
        if target.is_dir() and not target.is_symlink():  # a folder appeared (or filled up) while the job ran
            if not source.is_dir():
                raise IsADirectoryError(21, "a folder is there")
            if any(target.iterdir()) and not self._folders.get(target, False):
                raise OSError(39, "the folder is not empty")
        previous = None
        if target.exists() or target.is_symlink():
            previous = staging / f"{target.name}.previous-{os.getpid()}"
            os.replace(target, previous)
        try:
            os.replace(source, target)
        except OSError:
            if previous is not None:
                os.replace(previous, target)
            raise
        return source, target, previous

    @staticmethod
    def _roll_back(done: list[tuple[Path, Path, Optional[Path]]]) -> None:
        """Undo the renames of a commit that failed half way: the folder holds what it held before."""
        for source, target, previous in reversed(done):
            with contextlib.suppress(OSError):
                os.replace(target, source)
                if previous is not None:
                    os.replace(previous, target)


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
