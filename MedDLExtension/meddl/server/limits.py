"""Per-key limits that count what is still being built: a job whose uploads are being unpacked, a session whose
files are being placed. Each counts against its key's limit as a finished one does, so that many requests at
once cannot pass a limit that each checked alone."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator

from ..errors import MeddlError


class PerKeyLimit:
    """At most `limit` things per key, counting `existing(key)` and those being built (`building(key)`)."""

    def __init__(self, limit: int, existing: Callable[[str], int], refusal: Callable[[int], MeddlError]) -> None:
        self.limit, self.existing, self.refusal = limit, existing, refusal
        self._building: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def building(self, key: str) -> Iterator[None]:
        """Count one more thing of `key` while it is built (it must exist for `existing` before this ends); raises
        `refusal(held)` when the key already holds its limit."""
        with self._lock:
            held = self.existing(key) + self._building[key]
            if held >= self.limit:
                raise self.refusal(held)
            self._building[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._building[key] -= 1
                if self._building[key] <= 0:
                    del self._building[key]
