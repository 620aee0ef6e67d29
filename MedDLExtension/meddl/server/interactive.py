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

import contextlib
import dataclasses
import json
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..cli.interact import InteractRequest, InteractResult
from ..errors import MeddlError
from ..progress import Progress
from .client import ServerClient, SessionExpired

PromptsLike = Union[str, Path, Sequence[Any]]  # a JSON file, or prompts (`meddl.interactive.Prompt` or dicts)


def _close(client: ServerClient, holder: list[str], folder: Path) -> None:
    """Close the session on the server (if it still answers) and remove the local folder."""
    with contextlib.suppress(MeddlError):  # a server that is gone frees it after its idle timeout
        client.close_session(holder[0])
    shutil.rmtree(folder, ignore_errors=True)


class RemoteInteractiveSession:
    """One image and promptable model open on a server (`client`) for interactions until `close()`."""

    def __init__(self, client: ServerClient, image: Union[str, Path], model: Union[str, Path],
                 seed_labels: Union[str, Path, None] = None, device: str = "auto", seed: int = 0,
                 compress: bool = True, progress: Optional[Progress] = None) -> None:
        self.client = client
        seed_file = None if seed_labels is None else str(seed_labels)
        self._template = InteractRequest(str(image), str(model), "", "", seed_file, device, False, seed, compress)
        self._folder = Path(tempfile.mkdtemp(prefix="meddl-session-"))
        try:
            self._ref = client.open_session(self._template, progress)
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        self._holder = [self._ref.id]
        self._closer = weakref.finalize(self, _close, client, self._holder, self._folder)

    @property
    def id(self) -> str:
        """The server's id of the session."""
        return self._ref.id

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
        try:
            return self.client.run(request, progress, cancelled, session=self._ref)
        except SessionExpired:
            self._ref = self.client.open_session(self._template, progress)
            self._holder[0] = self._ref.id
            return self.client.run(request, progress, cancelled, session=self._ref)

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
