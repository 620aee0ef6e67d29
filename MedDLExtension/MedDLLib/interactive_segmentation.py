"""Promptable segmentation in the MedDL Segment Editor effect (no Qt): points, boxes, scribbles and lassos placed
in the views update the selected segment's preview, one interaction at a time, on the background worker.

A `PromptSegmentation` writes the source volume once into a private session folder and keeps that file
unchanged: every interaction sends the whole prompt history (`meddl interact`), and the worker, which remembers
its session by that file, runs only the new prompt (or undoes the last one) instead of replaying them all. When
the Compute setting is a MedDL server, the volume and model go up once into an interactive session kept there
(`compute.ServerSession`, freed by `close()`), and each interaction sends only the prompts. An
interaction changes the history only when its job succeeded; a failed or cancelled one leaves history, preview
and segmentation as they were. Prompts placed while an interaction runs wait (`submit`) and run together next.
`apply` writes the preview through the editor's logic (`apply_preview`: its masking, one undo step). Markups
become prompts in `prompt_markups`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from meddl.cli.interact import InteractRequest, InteractResult
from meddl.errors import InputError
from meddl.image import Image, check_volume
from meddl.io import read_image, write_image
from meddl.models import store
from meddl.models.formats import card_path_for

from .compute import ServerSession, current_compute
from .jobs import FolderJob, JobFailed, JobState
from .segment_editor import PREVIEW_ATTRIBUTE, Preview, apply_preview, discard_preview
from .segmentations import apply_label_map, label_map_from_segment_ids
from .volumes import image_from_volume_node

if TYPE_CHECKING:  # the engine's meddl.interactive loads torch, which Slicer's process must not need to import this
    from meddl.interactive.session import Prompt


class PromptSegmentation:
    """Prompts on one source volume, segmenting one segment with a promptable model (see the module docstring)."""

    def __init__(self, segmentation_node, segment_id: str, source_volume, model: str, device: str = "auto",
                 trust_model: bool = False) -> None:
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            raise InputError(f"segment {segment_id!r} is not in {segmentation_node.GetName()}: select a segment")
        if not str(model).strip():
            raise InputError("choose a promptable model (a library model, an nnInteractive folder or a SAM 2 "
                             "checkpoint)")
        self.segmentation_node, self.segment_id, self.source_volume = segmentation_node, segment_id, source_volume
        self.model, self.device, self.trust_model = str(model), device, trust_model
        self.image = image_from_volume_node(source_volume)
        check_volume(self.image, channels=1, what=f"volume {source_volume.GetName()!r}")
        self.folder = Path(tempfile.mkdtemp(prefix="meddl-prompts-"))
        try:
            self.image_path = write_image(self.image, self.folder / "image.nrrd", False)
        except Exception:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.history: list[Prompt] = []
        self.waiting: list[Prompt] = []  # placed while an interaction ran; dropped if it fails
        self.seed_path: Optional[Path] = None
        self.labels: Optional[Image] = None  # the current result, on the source volume's grid
        self.preview: Optional[Preview] = None
        self.last_result: Optional[InteractResult] = None
        self._job: Optional[InteractionJob] = None
        self._server: Optional[ServerSession] = None
        self._seeds = 0

    @property
    def running(self) -> bool:
        return self._job is not None and self._job.state is JobState.RUNNING

    def add(self, *prompts: Prompt) -> InteractionJob:
        """Run the history plus `prompts`; the job's `finish()` gives the updated preview."""
        if not prompts:
            raise InputError("no prompt to add")
        return self._run([*self.history, *prompts], self.seed_path)

    def submit(self, *prompts: Prompt) -> Optional[InteractionJob]:
        """Run `prompts` now, or (None) after the running interaction, when `run_waiting` is called."""
        self.waiting.extend(prompts)
        return self.run_waiting()

    def run_waiting(self) -> Optional[InteractionJob]:
        """The job for the prompts that waited, or None (none, or an interaction is still running)."""
        if not self.waiting or self.running:
            return None
        prompts, self.waiting = self.waiting, []
        return self.add(*prompts)

    def shown(self) -> list[Prompt]:
        """The prompts the views show: those of the running interaction (else the history) and those waiting."""
        return [*(self._job.prompts if self.running else self.history), *self.waiting]

    def undo_prompt(self) -> Optional[InteractionJob]:
        """Take the last prompt back: a job, or None when nothing is left to run (the preview goes)."""
        if not self.history:
            raise InputError("there is no prompt to undo")
        if len(self.history) == 1 and self.seed_path is None:
            self._check_idle()
            self.history, self.labels = [], None
            self._drop_preview()
            return None
        return self._run(self.history[:-1], self.seed_path)

    def seed_from_segment(self) -> InteractionJob:
        """Start again from the selected segment as it is now (the previous result, say): its labelmap on the
        source grid becomes the seed the next prompts refine; the prompts so far are dropped when it succeeds."""
        self._check_idle()
        name = self.segmentation_node.GetSegmentation().GetSegment(self.segment_id).GetName()
        mask = label_map_from_segment_ids(self.segmentation_node, self.source_volume, [self.segment_id]) > 0
        if not mask.any():
            raise InputError(f"segment {name!r} is empty: there is nothing to start from")
        self._seeds += 1
        seed = write_image(self.image.with_array(mask.astype(np.uint8)), self.folder / f"seed{self._seeds}.nrrd",
                           False)
        try:
            return self._run([], seed)
        except Exception:
            seed.unlink(missing_ok=True)
            raise

    def reset(self) -> None:
        """Forget every prompt and the seed; a running interaction is cancelled and the preview goes."""
        if self._job is not None:
            self._job.cancel()
            self._job = None
        self.history, self.waiting, self.labels, self.last_result = [], [], None, None
        self._replace_seed(None)
        self._drop_preview()

    def apply(self, logic) -> list[str]:
        """Write the preview into the selected segment through `logic` (the editor's masking, one undo step).
        The prompts are kept: more of them refine the result further."""
        if self.preview is None:
            raise InputError("there is no preview to apply: place a prompt first")
        if self.segmentation_node.GetSegmentation().GetSegment(self.segment_id) is None:
            raise InputError(f"segment {self.segment_id!r} was removed from {self.segmentation_node.GetName()}")
        preview, self.preview = self.preview, None
        return apply_preview(preview, logic)

    def close(self) -> None:
        """Cancel a running interaction, remove the preview and the session folder, free the server's session."""
        self.reset()
        self._close_server()
        shutil.rmtree(self.folder, ignore_errors=True)

    def request(self, prompts_file: str, output: str, seed: Optional[Path]) -> InteractRequest:
        """The `meddl interact` request of one interaction on this session's volume and model."""
        return InteractRequest(str(self.image_path), self.model, prompts_file, output, str(seed) if seed else None,
                               self.device, self.trust_model, compress=False)

    def server_session(self, seed: Optional[Path]) -> Optional[ServerSession]:
        """The session kept on the Compute setting's server for this volume, model and `seed` (a new one when any
        of them changed); None on this computer."""
        compute, template = current_compute(), self.request("", "", seed)
        if not compute.server_url:
            self._close_server()
            return None
        if self._server is None or not self._server.serves(compute, template):
            self._close_server()
            self._server = ServerSession(compute, template)
        return self._server

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def timing(self) -> str:
        """How long the last interaction took, for the status line ("0.8 s")."""
        return describe_timing(self.last_result) if self.last_result is not None else ""

    def _check_idle(self) -> None:
        if self.running:
            raise InputError("an interaction is still running: wait for it or cancel it")

    def _run(self, prompts: list[Prompt], seed: Optional[Path]) -> InteractionJob:
        self._check_idle()
        self._job = InteractionJob(self, prompts, seed)
        return self._job

    def _commit(self, job: InteractionJob, labels: Image, result: InteractResult) -> Preview:
        """A succeeded job's prompts, seed and labels become the session's; the preview shows them."""
        if job is not self._job:
            raise JobFailed("a later interaction replaced this one; nothing was changed")
        self._job = None
        if not labels.same_grid(self.image):
            raise JobFailed("the interaction's labels are not on the source volume's grid; nothing was changed")
        self.history, self.labels, self.last_result = list(job.prompts), labels, result
        self._replace_seed(job.seed)
        return self._show(labels)

    def _replace_seed(self, seed: Optional[Path]) -> None:
        if self.seed_path is not None and self.seed_path != seed:
            self.seed_path.unlink(missing_ok=True)
        self.seed_path = seed

    def _show(self, labels: Image) -> Preview:
        """The preview of the selected segment, updated in place when its node is still in the scene."""
        segment = self.segmentation_node.GetSegmentation().GetSegment(self.segment_id)
        if segment is None:
            raise JobFailed(f"segment {self.segment_id!r} was removed; nothing was changed")
        table = [{"value": 1, "name": segment.GetName(), "color": segment.GetColor()}]
        node = self.preview.node if self.preview is not None and self.preview.node.GetScene() is not None else None
        if node is not None:  # the segment may have been renamed: the preview shows only the new result
            node.GetSegmentation().RemoveAllSegments()
        node = apply_label_map(self.segmentation_node.GetScene(), labels, table, self.source_volume, node,
                               f"{self.segmentation_node.GetName()} prompt preview")
        node.SetAttribute(PREVIEW_ATTRIBUTE, "1")
        self.preview = Preview(node, labels, {1: self.segment_id})
        return self.preview

    def _drop_preview(self) -> None:
        if self.preview is not None:
            discard_preview(self.preview)
            self.preview = None


class InteractionJob(FolderJob):
    """One interaction on the worker: the session's image, `prompts` (the whole history) and seed; `finish()`
    makes them the session's and returns its Preview. Only the prompt file and the labels live in its folder."""

    def __init__(self, session: PromptSegmentation, prompts: Sequence[Prompt], seed: Optional[Path]) -> None:
        self.session, self.prompts, self.seed = session, list(prompts), seed
        super().__init__("meddl-interaction-")
        try:
            prompt_file = self.folder / "prompts.json"
            prompt_file.write_text(json.dumps({"prompts": [p.as_dict() for p in self.prompts]}), encoding="utf-8")
        except Exception:
            self.clean_up()
            raise
        request = session.request(str(prompt_file), str(self.folder / "labels.nrrd"), seed)
        self._start(request, session.device, session.server_session(seed))

    def _apply(self, result: InteractResult) -> Preview:
        return self.session._commit(self, read_image(result.labels), result)

    def finish(self) -> Preview:
        """The updated preview; a failed interaction drops the prompts that waited on it, and its seed."""
        try:
            return super().finish()
        except Exception:
            self._drop()
            raise

    def cancel(self) -> None:
        super().cancel()
        self._drop()

    def _drop(self) -> None:
        self.session.waiting.clear()
        if self.seed is not None and self.seed != self.session.seed_path:
            self.seed.unlink(missing_ok=True)


def describe_timing(result: InteractResult) -> str:
    """'0.8 s', with the whole request's time when it differs much, and whether all prompts were replayed."""
    if not result.seconds:
        return f"{result.total_seconds:.1f} s (undo or seed)"
    model = sum(result.seconds)
    text = f"{model:.1f} s" if len(result.seconds) == 1 else f"{model:.1f} s for {len(result.seconds)} prompts"
    if result.total_seconds > model + 0.5:
        text += f" ({result.total_seconds:.1f} s in all)"
    return text + (" - replayed from the first prompt" if result.replayed else "")


def model_licence(reference: str) -> str:
    """The licence of a promptable model found on this computer: a library model's card says it; a folder or
    checkpoint's LICENSE file (its first line) else; "" when unknown (the first interaction reports the model's
    own)."""
    try:
        installed = store.installed(reference) if store.ID_PATTERN.match(reference or "") else None
        path = installed.model_path if installed is not None else Path(reference or "")
        card = card_path_for(path) if installed is not None else None
        if card is not None and card.is_file():
            written = json.loads(card.read_text(encoding="utf-8")).get("license")
            if isinstance(written, str) and written.strip():
                return written.strip()
        licence = path / "LICENSE" if path.is_dir() else path.parent / "LICENSE"
        lines = licence.read_text(encoding="utf-8", errors="replace").strip().splitlines() if path.exists() else []
    except (OSError, ValueError, RuntimeError, AttributeError):  # a broken library entry or card, an odd path
        return ""
    return lines[0].strip() if lines else ""
