"""MedDL Segmentation: a volume in, a segmentation node out, through a background worker."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import ctk
import slicer
import vtk
from meddl.models import catalog
from MedDLLib.dependencies import ensure_dependencies
from MedDLLib.jobs import EngineJob, JobState, shut_down_workers
from MedDLLib.model_library import slicer_models_dir, use_models_dir
from MedDLLib.segmentation_job import SegmentationJob
from MedDLWidgets.job_runner import JobRunner
from MedDLWidgets.model_library_panel import ModelLibraryPanel
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class MedDLSegmentation(ScriptedLoadableModule):
    """Module description shown in Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDL Segmentation")
        self.parent.categories = [_("MedDL")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Segment a volume with a deep-learning model (a catalogued model, a MONAI bundle, a TorchScript "
            "file or a checkpoint with its model card). The model runs in a background process: the "
            "progress bar moves, Cancel stops it at any moment, and the scene changes only when it succeeds."
        )
        self.parent.acknowledgementText = _(
            "Built on PyTorch and MONAI. The default brain-extraction model is deepbet (MIT licence)."
        )


@parameterNodeWrapper
class MedDLSegmentationParameterNode:
    """What the panel edits: input volume, model, device and output segmentation."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = catalog.default_model("segmentation")
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode


class MedDLSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: selectors, Apply/Cancel, progress; all work happens in the logic's job."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.runner = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDLSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDLSegmentationLogic()
        use_models_dir(slicer_models_dir(slicer.app.slicerUserSettingsFilePath))
        self.library = ModelLibraryPanel(self.ui, "segmentation", self.onModelSelected, self.runEngineJob)
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.runner = JobRunner(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton,
                                lambda running: self._checkCanApply())
        self.initializeParameterNode()
        self.library.refresh(self._parameterNode.model)

    def cleanup(self) -> None:
        if self.runner:
            self.runner.cancel()
        shut_down_workers()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self.runner:
            self.runner.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.inputVolume) and not (self.runner and
                                                                                     self.runner.running)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Segment the input volume") if ready else _("Select an input volume")

    def onModelSelected(self, model_id: str) -> None:
        if self._parameterNode:
            self._parameterNode.model = model_id

    def onApplyButton(self) -> None:
        if not ensure_dependencies(lambda message: slicer.util.confirmOkCancelDisplay(message)):
            self.ui.statusLabel.text = _("MedDL's Python packages are not installed.")
            return
        parameters = self._parameterNode
        model = self.ui.modelPathLineEdit.currentPath or parameters.model
        try:
            job = self.logic.start(parameters.inputVolume, model, parameters.device, parameters.outputSegmentation)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start segmentation: {error}").format(error=error))
            return
        self.runner.start(job, _("Segmenting..."), self._applySegmentation)

    def runEngineJob(self, job: EngineJob, title: str, onSuccess) -> None:
        """Run a model-library job with the same progress bar and Cancel button."""
        self.runner.start(job, title, lambda _job: onSuccess())

    def _applySegmentation(self, job: SegmentationJob) -> None:
        segmentationNode = job.finish()  # raises with the worker's message if it failed
        self._parameterNode.outputSegmentation = segmentationNode
        self.ui.statusLabel.text = _("Done: {name}").format(name=segmentationNode.GetName())


class MedDLSegmentationLogic(ScriptedLoadableModuleLogic):
    """Console entry point: `slicer.util.getModuleLogic('MedDLSegmentation').process(volume)`."""

    def getParameterNode(self):
        return MedDLSegmentationParameterNode(super().getParameterNode())

    def start(self, inputVolume, model: Optional[str] = None, device: str = "auto",
              outputSegmentation=None) -> SegmentationJob:
        """Start a background job; poll it (or wait) and call finish() to get the node."""
        return SegmentationJob(slicer.mrmlScene, inputVolume, model, device, outputSegmentation)

    def process(self, inputVolume, model: Optional[str] = None, device: str = "auto",
                outputSegmentation=None, timeout: Optional[float] = None):
        """Segment and wait for the result (scripts and tests); raises with the worker's message."""
        job = self.start(inputVolume, model, device, outputSegmentation)
        if job.wait(timeout) is JobState.RUNNING:
            job.cancel()
            raise TimeoutError(f"segmentation did not finish in {timeout} s")
        logging.info("MedDL segmentation finished: %s", job.engine.message)
        return job.finish()


class MedDLSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: real sample data, the default model, cancel leaves no trace."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_brain_extraction_on_sample_data()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()

    def _sampleVolume(self):
        import SampleData

        return SampleData.SampleDataLogic().downloadMRHead()

    def test_brain_extraction_on_sample_data(self):
        self.delayDisplay("Brain extraction of MRHead")
        volume = self._sampleVolume()
        before = slicer.util.arrayFromVolume(volume).copy()
        segmentationNode = MedDLSegmentationLogic().process(volume, "deepbet-brain-extraction", "auto")
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Brain")
        brain = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(0), volume)
        self.assertGreater(int(brain.sum()), 100000)
        self.assertTrue((slicer.util.arrayFromVolume(volume) == before).all())
        self.delayDisplay("Brain extraction passed")

    def test_cancel_leaves_scene_unchanged(self):
        volume = self._sampleVolume()
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        job = MedDLSegmentationLogic().start(volume, "deepbet-brain-extraction", "cpu")
        job.cancel()
        self.assertEqual(job.state, JobState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Cancel passed")
