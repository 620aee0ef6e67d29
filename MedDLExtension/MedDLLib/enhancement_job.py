"""Denoising or super-resolution of a volume node on the background worker: a new volume node on success.

The input node is only read. The result is a new node (or replaces the voxels of an output node
the user chose) with the input's window/level, under the input's study, and with the settings
that made it stored as node attributes (MedDL.*), so the scene remembers how it was made.
"""

from __future__ import annotations

from typing import Any, Optional

from meddl.cli.enhance import EnhanceRequest, EnhanceResult
from meddl.enhancement import KINDS
from meddl.errors import InputError
from meddl.image import check_volume
from meddl.io import read_image, write_image

from .jobs import FolderJob
from .segmentations import place_beside_in_hierarchy
from .volumes import image_from_volume_node, set_volume_node_from_image, volume_node_from_image


class EnhancementJob(FolderJob):
    """Exports the input, runs `meddl enhance` on the worker and adds the enhanced volume on success."""

    def __init__(self, scene, input_volume, task: str = "denoise", model: Optional[str] = None,
                 device: str = "auto", steps: Optional[int] = None, factor: Optional[int] = None,
                 output_volume=None, time_budget_s: Optional[float] = None, noise: Optional[str] = None,
                 method: Optional[str] = None) -> None:
        if task not in KINDS:
            raise InputError(f"task must be one of {', '.join(KINDS)}, not {task!r}")
        if output_volume is not None and output_volume is input_volume:
            raise InputError("the output volume must not be the input volume: the input is always kept")
        self.scene, self.input_volume, self.output_volume, self.task = scene, input_volume, output_volume, task
        image = image_from_volume_node(input_volume)
        check_volume(image, what=f"volume {input_volume.GetName()!r}")
        super().__init__("meddl-enhance-")
        try:
            input_path = write_image(image, self.folder / "input.nrrd", compress=False)
        except Exception:
            self.clean_up()
            raise
        request = EnhanceRequest(str(input_path), str(self.folder / "enhanced.nrrd"), task, method,
                                 str(model) if model else None, steps, factor, time_budget_s, noise, device,
                                 compress=False)
        self._start(request, device)

    def _apply(self, result: EnhanceResult):
        """Add (or fill) the output volume node; returns it."""
        image = read_image(result.image)
        settings: dict[str, Any] = result.settings
        node = self.output_volume
        if node is None:
            label = "denoised" if self.task == "denoise" else "super-resolved"
            node = volume_node_from_image(self.scene, image, f"{self.input_volume.GetName()} {label}")
        else:
            set_volume_node_from_image(node, image)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
        copy_window_level(self.input_volume, node)
        node.SetAttribute("MedDL.source", self.input_volume.GetName())
        for key, value in settings.items():
            if value is not None:
                node.SetAttribute(f"MedDL.{key}", str(value))
        place_beside_in_hierarchy(self.scene, node, self.input_volume)
        return node


def copy_window_level(source, target) -> None:
    """The same window/level as the input, so the two compare at a glance."""
    shown, display = source.GetDisplayNode(), target.GetDisplayNode()
    if shown is None or display is None:
        return
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(shown.GetWindow(), shown.GetLevel())
    if shown.GetColorNodeID():
        display.SetAndObserveColorNodeID(shown.GetColorNodeID())
