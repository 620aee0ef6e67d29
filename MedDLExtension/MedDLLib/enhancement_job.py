"""Denoising or super-resolution of a volume node on the background worker: a new volume node on success.

The input node is only read. The result is a new node (or replaces the voxels of an output node
the user chose) with the input's window/level, under the input's study, and with the settings
that made it stored as node attributes (MedDL.*), so the scene remembers how it was made.
"""

from __future__ import annotations

from typing import Any, Optional

from meddl.errors import InputError
from meddl.image import check_volume
from meddl.io import read_image, write_image

from .jobs import EngineJob, FolderJob
from .segmentations import place_beside_in_hierarchy
from .volumes import image_from_volume_node, set_volume_node_from_image, volume_node_from_image

TASKS = ("denoise", "superres")


class EnhancementJob(FolderJob):
    """Exports the input, runs `meddl enhance` on the worker and adds the enhanced volume on success."""

    def __init__(self, scene, input_volume, task: str = "denoise", model: Optional[str] = None,
                 device: str = "auto", steps: Optional[int] = None, factor: Optional[int] = None,
                 output_volume=None, time_budget_s: Optional[float] = None, noise: Optional[str] = None) -> None:
        if task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
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
        self.output_path = self.folder / "enhanced.nrrd"
        arguments = ["enhance", str(input_path), str(self.output_path), "--task", task, "--device", device,
                     "--no-compress"]
        for option, value in (("--model", model), ("--steps", steps), ("--factor", factor),
                              ("--time-budget", time_budget_s), ("--noise", noise)):
            if value is not None:
                arguments += [option, str(value)]
        self.engine = EngineJob(arguments, device=device)

    def _apply(self):
        """Add (or fill) the output volume node; returns it."""
        image = read_image(self.output_path)
        settings: dict[str, Any] = self.engine.result.get("settings", {})
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
