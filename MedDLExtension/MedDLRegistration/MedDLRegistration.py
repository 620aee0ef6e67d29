"""MedDL Registration: deformable registration into a grid transform node, a warped volume and segmentation."""

from __future__ import annotations

from typing import Annotated, Optional

import ctk
import slicer
from meddl.device import DEVICE_CHOICES
from MedDLLib.jobs import JobState, finish_within
from MedDLLib.registration_job import RegistrationJob, RegistrationOutputs
from MedDLWidgets.module_widget import MedDLWidgetMixin
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

FAST_BUDGET_S = 60.0  # the panel's "Fast": seconds of optimisation, shared among the pyramid levels


class MedDLRegistration(ScriptedLoadableModule):
    """Module description shown in Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDL Registration")
        self.parent.categories = [_("MedDL")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Align a moving volume (and a segmentation drawn on it) to a fixed volume: affine pre-alignment, "
            "then a diffeomorphic deformation optimised on this pair (no pretrained weights), or predicted by a "
            "learned registration model from the model library. The result is a "
            "grid transform node you can apply to any node, the warped volume and segmentation, and a table "
            "of quality figures. Runs in the background with progress and Cancel."
        )
        self.parent.acknowledgementText = _("Built on PyTorch and MONAI (LNCC, mutual information, bending energy).")


@parameterNodeWrapper
class MedDLRegistrationParameterNode:
    """What the panel edits."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    movingSegmentation: vtkMRMLSegmentationNode
    method: Annotated[str, Choice(["deformable", "affine"])] = "deformable"
    similarity: Annotated[str, Choice(["lncc", "mi"])] = "lncc"
    iterations: int = 0
    fast: bool = False  # a time budget of FAST_BUDGET_S seconds, shared among the pyramid levels
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    model: str = ""  # a learned registration model from the library; empty: optimise on this pair


class MedDLRegistrationWidget(MedDLWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: fixed, moving, what to carry along, method; Apply/Cancel run the logic's job."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDLRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDLRegistrationLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.setupMedDL("registration")

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.applyButton.enabled = ready and not self.isRunning()
        self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume") if ready else _(
            "Select two different volumes")

    def onApplyButton(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        model = self.ui.modelPathLineEdit.currentPath or p.model or None
        try:
            job = self.logic.start(p.fixedVolume, p.movingVolume, p.movingSegmentation, p.method, p.similarity,
                                   p.device, p.iterations or None, model, FAST_BUDGET_S if p.fast else None)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start registration: {error}").format(error=error))
            return
        self.runner.start(job, _("Registering..."), lambda outputs: self._showResult(job, outputs))

    def _showResult(self, job: RegistrationJob, outputs: RegistrationOutputs) -> None:
        slicer.util.setSliceViewerLayers(background=job.fixed_volume, foreground=outputs.warped_volume,
                                         foregroundOpacity=0.5)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(outputs.table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        self.ui.statusLabel.text = _("Done: {name}").format(name=outputs.transform.GetName())


class MedDLRegistrationLogic(ScriptedLoadableModuleLogic):
    """Console entry point: `slicer.util.getModuleLogic('MedDLRegistration').process(fixed, moving)`."""

    def getParameterNode(self):
        return MedDLRegistrationParameterNode(super().getParameterNode())

    def start(self, fixedVolume, movingVolume, movingSegmentation=None, method: str = "deformable",
              similarity: str = "lncc", device: str = "auto", iterations: Optional[int] = None,
              model: Optional[str] = None, timeBudget: Optional[float] = None) -> RegistrationJob:
        """Start a background job; poll it (or wait) and call finish() to get the new nodes.

        `model`: a learned registration model (library id or file) instead of optimising on this pair;
        `timeBudget`: seconds of optimisation, shared among the pyramid levels (None: until converged).
        """
        return RegistrationJob(slicer.mrmlScene, fixedVolume, movingVolume, movingSegmentation, method, similarity,
                               device, iterations, model, timeBudget)

    def process(self, fixedVolume, movingVolume, movingSegmentation=None, method: str = "deformable",
                similarity: str = "lncc", device: str = "auto", timeout: Optional[float] = None,
                model: Optional[str] = None):
        """Register and wait (scripts and tests); returns the RegistrationOutputs."""
        job = self.start(fixedVolume, movingVolume, movingSegmentation, method, similarity, device, model=model)
        return finish_within(job, timeout, "registration")


class MedDLRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: register a shifted copy of sample data through the panel (a segmentation carried
    along) and the logic; Cancel leaves no trace."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_deformable_registration_carries_a_segmentation()
        self.setUp()
        self.test_affine_registration_of_a_shifted_copy()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()

    def _pair(self):
        import SampleData

        fixed = SampleData.SampleDataLogic().downloadMRHead()
        moving = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, fixed, "MRHead shifted")
        origin = list(moving.GetOrigin())
        moving.SetOrigin(origin[0] + 4.0, origin[1] - 3.0, origin[2])
        return fixed, moving

    def _headSegmentation(self, volume):
        """A segmentation drawn on `volume`: one segment, the voxels above a tenth of its maximum."""
        array = slicer.util.arrayFromVolume(volume)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} head")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = node.GetSegmentation().AddEmptySegment("Head")
        slicer.util.updateSegmentBinaryLabelmapFromArray((array > array.max() / 10).astype("uint8"), node, segmentId,
                                                         volume)
        return node

    def _added(self, className: str, *kept) -> list:
        """The nodes of exactly `className` in the scene, less those in `kept`."""
        keptIds = {node.GetID() for node in kept}
        return [node for node in slicer.util.getNodesByClass(className)
                if node.GetClassName() == className and node.GetID() not in keptIds]

    def test_panel_deformable_registration_carries_a_segmentation(self):
        self.delayDisplay("Deformable registration of a shifted MRHead through the panel, with its segmentation")
        fixed, moving = self._pair()
        segmentation = self._headSegmentation(moving)
        widget = slicer.util.getModuleWidget("MedDLRegistration")
        widget.enter()  # as on entering the module: a scene clear drops the panel's parameter node
        parameters = widget._parameterNode
        parameters.fixedVolume = fixed
        parameters.movingVolume = moving
        parameters.movingSegmentation = segmentation
        parameters.method = "deformable"
        parameters.similarity = "lncc"
        parameters.iterations = 2  # steps per pyramid level: the path through the panel is under test, not accuracy
        parameters.device = "cpu"
        status = widget.applyAndWait()
        self.assertTrue(status.startswith("Done"), status)
        self.assertEqual(len(self._added("vtkMRMLGridTransformNode")), 1)
        self.assertEqual(len(self._added("vtkMRMLTableNode")), 1)
        warped = self._added("vtkMRMLScalarVolumeNode", fixed, moving)
        self.assertEqual(len(warped), 1)
        self.assertEqual(slicer.util.arrayFromVolume(warped[0]).shape, slicer.util.arrayFromVolume(fixed).shape)
        carried = self._added("vtkMRMLSegmentationNode", segmentation)
        self.assertEqual(len(carried), 1)
        head = slicer.util.arrayFromSegmentBinaryLabelmap(carried[0], carried[0].GetSegmentation().GetNthSegmentID(0),
                                                          fixed)
        self.assertGreater(int(head.sum()), 0)
        self.delayDisplay("Panel registration passed")

    def test_affine_registration_of_a_shifted_copy(self):
        self.delayDisplay("Affine registration of a shifted MRHead")
        fixed, moving = self._pair()
        outputs = MedDLRegistrationLogic().process(fixed, moving, method="affine")
        self.assertTrue(outputs.transform.IsA("vtkMRMLGridTransformNode"))
        self.assertGreater(outputs.table.GetTable().GetValue(1, 1).ToDouble(), 0.9)  # NCC after
        self.delayDisplay("Registration passed")

    def test_cancel_leaves_scene_unchanged(self):
        fixed, moving = self._pair()
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        job = MedDLRegistrationLogic().start(fixed, moving, device="cpu")
        job.cancel()
        self.assertEqual(job.state, JobState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Cancel passed")
