"""MedDL Registration: deformable registration into a grid transform node, a warped volume and segmentation."""

from __future__ import annotations

from typing import Annotated, Optional

import slicer
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
            "then a diffeomorphic deformation optimised on this pair (no pretrained weights). The result is a "
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
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


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
        self.setupMedDL("registration", withLibrary=False)

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
        try:
            job = self.logic.start(p.fixedVolume, p.movingVolume, p.movingSegmentation, p.method, p.similarity,
                                   p.device, p.iterations or None)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start registration: {error}").format(error=error))
            return
        self.runner.start(job, _("Registering..."), self._showResult)

    def _showResult(self, job: RegistrationJob) -> None:
        outputs: RegistrationOutputs = job.finish()
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
              similarity: str = "lncc", device: str = "auto", iterations: Optional[int] = None) -> RegistrationJob:
        """Start a background job; poll it (or wait) and call finish() to get the new nodes."""
        return RegistrationJob(slicer.mrmlScene, fixedVolume, movingVolume, movingSegmentation, method, similarity,
                               device, iterations)

    def process(self, fixedVolume, movingVolume, movingSegmentation=None, method: str = "deformable",
                similarity: str = "lncc", device: str = "auto", timeout: Optional[float] = None):
        """Register and wait (scripts and tests); returns the RegistrationOutputs."""
        job = self.start(fixedVolume, movingVolume, movingSegmentation, method, similarity, device)
        return finish_within(job, timeout, "registration")


class MedDLRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: register a shifted copy of sample data; Cancel leaves no trace."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
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
