"""An interactive (promptable) segmentation session kept on a MedDL server, for a front end that prompts again and
again (Slicer's Segment Editor effect, a script): the image and the model are uploaded once, and each interaction
sends only the prompt history and brings the label map back.

    with RemoteInteractiveSession(ServerClient(url, key), "ct.nii.gz", "nninteractive") as session:
        first = session.interact([point])             # InteractResult: .labels (a local file), .seconds
        second = session.interact([point, negative])  # the server's worker runs only the new prompt

The history goes whole each time, as `meddl interact` takes it; the server's worker keeps the session and runs only
what is new (or one undo). When the server no longer has the session (closed elsewhere, idle past its timeout,
restarted), it is opened again and the history runs from the start: the answer never depends on what the server
remembered, only how long it takes. A session not closed is closed when this object is collected or the Python
process ends, and by the server after its idle timeout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..cli.interact import InteractRequest, InteractResult
from ..errors import MeddlError
from ..progress import Progress
from ..protocol import Request, Result
from .client import ServerClient, SessionExpired, SessionRef

log = logging.getLogger(__name__)

PromptsLike = Union[str, Path, Sequence[Any]]  # a JSON file, or prompts (`meddl.interactive.Prompt` or dicts)


class KeptSession:
    """The interactive session of `template` (a request whose type has `session_fields`) on the server of `client`:
    opened by `open()` or the first `run()`, opened again when the server lost it, freed by `close()`. Safe to use
    from a job's thread while another closes it."""

    def __init__(self, client: ServerClient, template: Request) -> None:
        self.client, self.template = client, template
        self._ref: Optional[SessionRef] = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def id(self) -> Optional[str]:
        """The server's id of the session (None before it is opened)."""
        return self._ref.id if self._ref is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self, progress: Optional[Progress] = None) -> SessionRef:
        """The open session, uploading the template's fixed inputs when it is not open yet (never under the lock:
        `close()` must not wait for an upload)."""
        with self._lock:
            if self._ref is not None or self._closed:
                return self._checked()
        ref = self.client.open_session(self.template, progress)
        with self._lock:
            if self._ref is None and not self._closed:
                self._ref = ref
                return ref
        self._close_on_server(ref)  # closed meanwhile, or another thread opened one first
        with self._lock:
            return self._checked()

    def _checked(self) -> SessionRef:
        if self._closed or self._ref is None:
            raise MeddlError("the interactive session is closed")
        return self._ref

    def run(self, request: Request, progress: Optional[Progress] = None,
            cancelled: Optional[Callable[[], bool]] = None) -> Result:
        """`request` in the session, as `ServerClient.run` gives it; opened again once if the server lost it."""
        try:
            return self.client.run(request, progress, cancelled, session=self.open(progress))
        except SessionExpired:
            with self._lock:
                self._ref = None
            return self.client.run(request, progress, cancelled, session=self.open(progress))

    def close(self, background: bool = False) -> None:
        """Free the session on the server, in a thread of its own when `background` (a front end must not wait
        for it); it cannot run jobs from now on. A server that cannot be reached frees it after its idle timeout."""
        with self._lock:
            ref, self._ref, self._closed = self._ref, None, True
        if ref is not None and background:
            threading.Thread(target=self._close_on_server, args=(ref,), name="meddl-close-session",
                             daemon=True).start()
        elif ref is not None:
            self._close_on_server(ref)

    def _close_on_server(self, ref: SessionRef) -> None:
        try:
            self.client.close_session(ref.id)
        except MeddlError as error:
            log.info("the server did not close interactive session %s (%s)", ref.id, error)


def _close(kept: KeptSession, folder: Path) -> None:
    """Close the session on the server (if it still answers) and remove the local folder."""
    kept.close()
    shutil.rmtree(folder, ignore_errors=True)


class RemoteInteractiveSession:
    """One image and promptable model open on a server (`client`) for interactions until `close()`."""

    def __init__(self, client: ServerClient, image: Union[str, Path], model: Union[str, Path],
                 seed_labels: Union[str, Path, None] = None, device: str = "auto", seed: int = 0,
                 compress: bool = True, progress: Optional[Progress] = None) -> None:
        self.client = client
        seed_file = None if seed_labels is None else str(seed_labels)
        self._template = InteractRequest(str(image), str(model), "", "", seed_file, device, False, seed, compress)
        self._kept = KeptSession(client, self._template)
        self._folder = Path(tempfile.mkdtemp(prefix="meddl-session-"))
        try:
            self._kept.open(progress)
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        self._closer = weakref.finalize(self, _close, self._kept, self._folder)

    @property
    def id(self) -> str:
        """The server's id of the session."""
        return self._kept.id

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def interact(self, prompts: PromptsLike, output: Union[str, Path, None] = None,
                 progress: Optional[Progress] = None, cancelled: Optional[Callable[[], bool]] = None) -> InteractResult:
        """The label map after `prompts`, the whole history in order, written to `output` (default: a file of this
        session's private folder, replaced by each interaction); its `seconds` hold each prompt run now."""
        if self.closed:
            raise MeddlError("the interactive session is closed")
        target = Path(output) if output is not None else self._folder / "labels.nii.gz"
        request = dataclasses.replace(self._template, prompts=str(self._prompts_file(prompts)), output=str(target))
        return self._kept.run(request, progress, cancelled)

    def _prompts_file(self, prompts: PromptsLike) -> Path:
        if isinstance(prompts, (str, Path)):
            return Path(prompts)
        path = self._folder / "prompts.json"
        items = [item.as_dict() if hasattr(item, "as_dict") else item for item in prompts]
        path.write_text(json.dumps({"prompts": items}), encoding="utf-8")
        return path

    def close(self) -> None:
        """Close the session on the server (its worker forgets it, its files go) and remove the local files."""
        self._closer()

    def __enter__(self) -> RemoteInteractiveSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
