"""MedDL Enhancement: denoising and through-plane super-resolution into a new volume, the input kept."""

from __future__ import annotations

from typing import Annotated, Optional

import ctk
import slicer
from meddl.device import DEVICE_CHOICES
from MedDLLib.enhancement_job import EnhancementJob
from MedDLLib.jobs import JobState, finish_within
from MedDLWidgets.module_widget import MedDLWidgetMixin
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class MedDLEnhancement(ScriptedLoadableModule):
    """Module description shown in Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDL Enhancement")
        self.parent.categories = [_("MedDL")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Denoise a volume, or restore detail along its thick-slice axis, into a new volume (the input is "
            "kept). Denoising defaults to the collaborative filter calibrated on the image itself (seconds, no "
            "weights); 'self-supervised network' also trains a blind-spot network on the image to guide it "
            "(minutes; measured no better on CPU); super-resolution always trains its network on the image; "
            "'model' runs a pretrained enhancement model. Runs in the background with progress and Cancel."
        )
        self.parent.acknowledgementText = _(
            "Blind-spot denoising in the manner of Noise2Void/Noise2Self; super-resolution in the manner of "
            "SMORE. Built on PyTorch and MONAI."
        )


# The panel's methods and the engine's: the filter denoises without a network (the default, measured as good
# as the network path in a third to a fifth of the time); super-resolution has only its self-trained network.
METHODS = ["collaborative filter (fast)", "self-supervised network", "model"]
ENGINE_METHODS = {"collaborative filter (fast)": "filter", "self-supervised network": "network"}


@parameterNodeWrapper
class MedDLEnhancementParameterNode:
    """What the panel edits."""

    inputVolume: vtkMRMLScalarVolumeNode
    task: Annotated[str, Choice(["denoise", "superres"])] = "denoise"
    method: Annotated[str, Choice(METHODS)] = METHODS[0]
    model: str = ""
    steps: int = 0  # 0: the method's default
    factor: int = 0
    noise: Annotated[str, Choice(["auto", "rician", "gaussian"])] = "auto"
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    outputVolume: vtkMRMLScalarVolumeNode


class MedDLEnhancementWidget(MedDLWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: input, task, method, model library, output; Apply/Cancel run the logic's job."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDLEnhancement.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDLEnhancementLogic()
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.setupMedDL("enhancement")

    def _setDefaults(self) -> None:
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        hasModel = bool(p and (p.method != "model" or p.model or self.ui.modelPathLineEdit.currentPath))
        filterSuperres = bool(p and p.task == "superres" and ENGINE_METHODS.get(p.method) == "filter")
        ready = bool(p and p.inputVolume) and hasModel and not filterSuperres and not self.isRunning()
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Enhance the input volume") if ready else _(
            "Select an input volume (and a model for the 'model' method); super-resolution has no filter "
            "method: choose 'self-supervised network'")
        self.ui.stepsSpinBox.enabled = bool(p and p.method == "self-supervised network")

    def onApplyButton(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        model = (self.ui.modelPathLineEdit.currentPath or p.model) if p.method == "model" else None
        method = ENGINE_METHODS.get(p.method)
        noise = p.noise if p.task == "denoise" and model is None else None
        steps = (p.steps or None) if method == "network" else None
        try:
            job = self.logic.start(p.inputVolume, p.task, model, p.device, steps, p.factor or None,
                                   p.outputVolume, noise, method)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start enhancement: {error}").format(error=error))
            return
        self.runner.start(job, _("Enhancing..."), lambda node: self._showResult(job, node))

    def _showResult(self, job: EnhancementJob, node) -> None:
        self._parameterNode.outputVolume = node
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, volume in (("Red", job.input_volume), ("Yellow", node)):
            composite = layoutManager.sliceWidget(viewName).mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(volume.GetID())
            composite.SetForegroundVolumeID(None)
        self.ui.statusLabel.text = _("Done: {name}").format(name=node.GetName())


class MedDLEnhancementLogic(ScriptedLoadableModuleLogic):
    """Console entry point: `slicer.util.getModuleLogic('MedDLEnhancement').process(volume, 'denoise')`."""

    def getParameterNode(self):
        return MedDLEnhancementParameterNode(super().getParameterNode())

    def start(self, inputVolume, task: str = "denoise", model: Optional[str] = None, device: str = "auto",
              steps: Optional[int] = None, factor: Optional[int] = None, outputVolume=None,
              noise: Optional[str] = None, method: Optional[str] = None) -> EnhancementJob:
        """Start a background job; poll it (or wait) and call finish() to get the new volume node.

        Denoising runs the collaborative filter without a network unless `method="network"` (or steps > 0).
        """
        return EnhancementJob(slicer.mrmlScene, inputVolume, task, model, device, steps, factor, outputVolume,
                              noise=noise, method=method)

    def process(self, inputVolume, task: str = "denoise", model: Optional[str] = None, device: str = "auto",
                steps: Optional[int] = None, factor: Optional[int] = None, timeout: Optional[float] = None,
                method: Optional[str] = None):
        """Enhance and wait (scripts and tests); raises with the worker's message."""
        job = self.start(inputVolume, task, model, device, steps, factor, method=method)
        return finish_within(job, timeout, "enhancement")


class MedDLEnhancementTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: denoise sample data through the panel and the logic, the input kept, Cancel leaves
    no trace."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_fast_denoising()
        self.setUp()
        self.test_denoise_keeps_the_input_and_its_grid()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()

    def _sampleVolume(self):
        import SampleData

        return SampleData.SampleDataLogic().downloadMRHead()

    def _centralBlock(self, size: int = 64):
        """A size^3 block from the middle of MRHead, on MRHead's grid: seconds of CPU, not minutes."""
        import vtk

        volume = self._sampleVolume()
        array = slicer.util.arrayFromVolume(volume)
        start = [(extent - size) // 2 for extent in array.shape]  # k, j, i
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        corner = ijkToRas.MultiplyPoint([*reversed(start), 1.0])
        for row in range(3):
            ijkToRas.SetElement(row, 3, corner[row])
        block = array[tuple(slice(first, first + size) for first in start)]
        return slicer.util.addVolumeFromArray(block, ijkToRas, f"{volume.GetName()} block")

    def _checkDenoised(self, node, volume, before):
        """A new volume on the input's grid, changed, made by denoising; the input unchanged."""
        self.assertIsNotNone(node)
        denoised = slicer.util.arrayFromVolume(node)
        self.assertEqual(denoised.shape, before.shape)
        self.assertFalse((denoised == before).all())
        self.assertEqual(node.GetAttribute("MedDL.task"), "denoise")
        self.assertTrue((slicer.util.arrayFromVolume(volume) == before).all())

    def test_panel_fast_denoising(self):
        self.delayDisplay("Denoising a block of MRHead through the panel, with the collaborative filter")
        volume = self._centralBlock()
        before = slicer.util.arrayFromVolume(volume).copy()
        widget = slicer.util.getModuleWidget("MedDLEnhancement")
        widget.enter()  # as on entering the module: a scene clear drops the panel's parameter node
        parameters = widget._parameterNode
        parameters.inputVolume = volume
        parameters.task = "denoise"
        parameters.method = "model"
        parameters.model = ""
        self.assertFalse(widget.ui.applyButton.enabled)  # the 'model' method without a model
        parameters.method = "collaborative filter (fast)"
        parameters.noise = "auto"
        parameters.device = "cpu"
        parameters.outputVolume = None
        status = widget.applyAndWait()
        self.assertTrue(status.startswith("Done"), status)
        self._checkDenoised(parameters.outputVolume, volume, before)
        self.delayDisplay("Panel denoising passed")

    def test_denoise_keeps_the_input_and_its_grid(self):
        self.delayDisplay("Self-supervised denoising of a block of MRHead")
        volume = self._centralBlock()
        before = slicer.util.arrayFromVolume(volume).copy()
        node = MedDLEnhancementLogic().process(volume, "denoise", steps=50)
        self._checkDenoised(node, volume, before)
        self.delayDisplay("Denoising passed")

    def test_cancel_leaves_scene_unchanged(self):
        volume = self._sampleVolume()
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        job = MedDLEnhancementLogic().start(volume, "denoise", device="cpu")
        job.cancel()
        self.assertEqual(job.state, JobState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Cancel passed")
