"""MedDL Classification: class probabilities for volumes or 2D images, a table node, Grad-CAM overlays."""

from __future__ import annotations

from typing import Annotated, Optional

import ctk
import slicer
from meddl.device import DEVICE_CHOICES
from MedDLLib.classification_job import ClassificationJob
from MedDLLib.jobs import finish_within
from MedDLWidgets.module_widget import MedDLWidgetMixin
from slicer import vtkMRMLMarkupsROINode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class MedDLClassification(ScriptedLoadableModule):
    """Module description shown in Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDL Classification")
        self.parent.categories = [_("MedDL")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Classify one or more volumes (or 2D images loaded as single-slice volumes) with a MONAI "
            "classifier: a table of class probabilities and, if asked, a Grad-CAM saliency map per input, "
            "shown over it. An optional ROI limits what the model sees. Runs in the background with Cancel."
        )
        self.parent.acknowledgementText = _("Built on PyTorch and MONAI (Grad-CAM from monai.visualize).")


@parameterNodeWrapper
class MedDLClassificationParameterNode:
    """What the panel edits (the input volumes are the checked items of the volume selector)."""

    model: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    roi: vtkMRMLMarkupsROINode
    computeSaliency: bool = True
    saliencyClass: str = ""
    outputTable: vtkMRMLTableNode


class MedDLClassificationWidget(MedDLWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, model library, options, Apply/Cancel; all work happens in the logic's job."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDLClassification.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDLClassificationLogic()
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.inputVolumesSelector.connect("checkedNodesChanged()", self._checkCanApply)
        self.setupMedDL("classification")

    def _checkCanApply(self, caller=None, event=None) -> None:
        hasModel = bool(self._parameterNode and (self._parameterNode.model or self.ui.modelPathLineEdit.currentPath))
        ready = bool(self.ui.inputVolumesSelector.checkedNodes()) and hasModel and not self.isRunning()
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Classify the checked volumes") if ready else _(
            "Check at least one volume and choose a model")

    def onApplyButton(self) -> None:
        if not self.dependenciesReady():
            return
        p = self._parameterNode
        volumes = list(self.ui.inputVolumesSelector.checkedNodes())
        try:
            job = self.logic.start(volumes, self.ui.modelPathLineEdit.currentPath or p.model, p.device, p.outputTable,
                                   p.saliencyClass or None, p.computeSaliency, p.roi)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start classification: {error}").format(error=error))
            return
        self.runner.start(job, _("Classifying..."), lambda table: self._showResults(job, table))

    def _showResults(self, job: ClassificationJob, table) -> None:
        self._parameterNode.outputTable = table
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        if job.saliency_nodes:
            slicer.util.setSliceViewerLayers(background=job.volumes[0], foreground=job.saliency_nodes[0],
                                             foregroundOpacity=0.4)
        self.ui.statusLabel.text = _("Done: {count} input(s) classified.").format(count=len(job.volumes))


class MedDLClassificationLogic(ScriptedLoadableModuleLogic):
    """Console entry point: `slicer.util.getModuleLogic('MedDLClassification').process([volume], model)`."""

    def getParameterNode(self):
        return MedDLClassificationParameterNode(super().getParameterNode())

    def start(self, volumes, model: str, device: str = "auto", outputTable=None, saliencyClass: Optional[str] = None,
              computeSaliency: bool = False, roi=None) -> ClassificationJob:
        """Start a background job; poll it (or wait) and call finish() to get the table node."""
        return ClassificationJob(slicer.mrmlScene, list(volumes), model, device, outputTable, saliencyClass,
                                 computeSaliency, roi)

    def process(self, volumes, model: str, device: str = "auto", outputTable=None, computeSaliency: bool = False,
                timeout: Optional[float] = None):
        """Classify and wait (scripts and tests); returns the table node and the job (for its saliency nodes)."""
        job = self.start(volumes, model, device, outputTable, None, computeSaliency)
        return finish_within(job, timeout, "classification"), job


class MedDLClassificationTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a small classifier built here, real sample data; the panel (checked volumes, ROI,
    Apply) and the logic, table and saliency."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_table_and_saliency_inside_a_roi()
        self.setUp()
        self.test_table_and_saliency()

    def _classifier(self) -> str:
        import json
        import tempfile
        from pathlib import Path

        import torch
        from meddl.classification.training import network_spec
        from meddl.models.networks import build_monai_network

        folder = Path(tempfile.mkdtemp(prefix="meddl-selftest-"))
        network, layer = network_spec("densenet", 3, 1, 2)
        torch.save(build_monai_network(network, "self-test").state_dict(), folder / "model.pt")
        card = {"name": "self-test", "task": "classification", "license": "MIT",
                "input": {"channels": 1, "size": [32, 32, 32], "intensity": {"method": "zscore"}},
                "labels": [{"value": 0, "name": "a"}, {"value": 1, "name": "b"}], "network": network,
                "saliency": {"target_layer": layer}}
        (folder / "model.json").write_text(json.dumps(card))
        return str(folder / "model.pt")

    def test_panel_table_and_saliency_inside_a_roi(self):
        import SampleData

        self.delayDisplay("Classification of MRHead through the panel, limited to a ROI")
        volume = SampleData.SampleDataLogic().downloadMRHead()
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "MedDL self-test ROI")
        roi.SetCenter([(bounds[2 * axis] + bounds[2 * axis + 1]) / 2 for axis in range(3)])
        roi.SetSize([60.0, 60.0, 60.0])
        widget = slicer.util.getModuleWidget("MedDLClassification")
        widget.enter()  # as on entering the module: a scene clear drops the panel's parameter node
        parameters = widget._parameterNode
        parameters.model = self._classifier()
        parameters.device = "cpu"
        parameters.roi = roi
        parameters.computeSaliency = True
        parameters.outputTable = None
        widget.ui.inputVolumesSelector.check(volume)
        status = widget.applyAndWait()
        self.assertTrue(status.startswith("Done"), status)
        table = parameters.outputTable
        self.assertIsNotNone(table)
        self.assertEqual(table.GetNumberOfRows(), 1)
        saliency = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                    if node.GetID() != volume.GetID()]
        self.assertEqual(len(saliency), 1)
        heat = slicer.util.arrayFromVolume(saliency[0])
        self.assertEqual(heat.shape, slicer.util.arrayFromVolume(volume).shape)  # on the input's whole grid
        self.assertEqual(float(heat[0, 0, 0]), 0.0)  # a corner lies outside the ROI
        self.delayDisplay("Panel classification passed")

    def test_table_and_saliency(self):
        import SampleData

        volume = SampleData.SampleDataLogic().downloadMRHead()
        table, job = MedDLClassificationLogic().process([volume], self._classifier(), "cpu", computeSaliency=True)
        self.assertEqual(table.GetNumberOfRows(), 1)
        self.assertEqual(job.saliency_nodes[0].GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        self.delayDisplay("Classification self-test passed")
