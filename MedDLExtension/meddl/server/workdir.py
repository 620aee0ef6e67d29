"""The server's work folder: its private folder, marked as a MedDL server's and locked against a second server.

It holds `uploads/`, `jobs/<id>/` (each job's inputs and outputs), `sessions/<id>/` (each interactive session's
inputs) and `worker/` (the workers' empty current folder); what a previous run left is removed when a server
starts and everything when it stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from ..errors import MeddlError

MARKER = ".meddl-server"  # marks (and locks) a work folder as a MedDL server's


class WorkDirError(MeddlError):
    """The work folder cannot be used."""

    exit_code = 2


class WorkDir:
    """The server's private folder: created 0700 (or checked: a folder of this user, not a link), marked as a
    MedDL server's, locked against a second server, and emptied of a previous run's leftovers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_file = None
        self._prepare()

    def _prepare(self) -> None:
        path = self.path
        try:
            path.mkdir(mode=0o700, parents=True)
            created = True
        except FileExistsError:
            created = False
        except OSError as error:
            raise WorkDirError(f"cannot create the work folder {path}: {error.strerror}") from None
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise WorkDirError(f"the work folder {path} is a link or not a folder")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise WorkDirError(f"the work folder {path} belongs to another user")
        marker = path / MARKER
        if not created and not marker.is_file() and any(path.iterdir()):
            raise WorkDirError(f"the work folder {path} holds files that are not a MedDL server's: give an empty "
                               "or new folder (the server deletes what its work folder holds)")
        os.chmod(path, 0o700)
        self.path = path = path.resolve()  # the paths the workers report, links in its parents resolved
        descriptor = os.open(marker, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        self._lock_file = os.fdopen(descriptor, "r+")  # held open, and locked, while the server runs
        try:
            import fcntl

            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory lock
            pass
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise WorkDirError(f"another MedDL server uses the work folder {path}: give each server its own "
                               "--work-dir") from None
        self.clean()
        for name in ("uploads", "jobs", "sessions", "worker"):
            (path / name).mkdir(mode=0o700)

    def clean(self) -> None:
        """Remove everything but the marker (what a killed or stopped server left)."""
        for child in self.path.iterdir():
            if child.name == MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()

    @property
    def uploads(self) -> Path:
        return self.path / "uploads"

    @property
    def jobs(self) -> Path:
        return self.path / "jobs"

    @property
    def sessions(self) -> Path:
        return self.path / "sessions"

    @property
    def worker_cwd(self) -> Path:
        """The workers' current folder: empty, so that a model id can never name a file there."""
        return self.path / "worker"

    def close(self, clean: bool = True) -> None:
        if clean:
            self.clean()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
