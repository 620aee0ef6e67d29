"""MedDL Segmentation: a volume in, a segmentation node out, through a background worker."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import ctk
import numpy as np
import slicer
from meddl.device import DEVICE_CHOICES
from meddl.models import catalog, store
from meddl.models.formats import nnunet_results_folder
from MedDLLib.cohort_job import CohortJob
from MedDLLib.compute import SETTINGS_KEY, SETTINGS_URL, current_compute, load_compute
from MedDLLib.dicom_export import INSTANCE_UIDS, export_dicom_seg, source_files_of_volume
from MedDLLib.jobs import JobState, finish_within
from MedDLLib.model_library import library_rows
from MedDLLib.segmentation_job import SegmentationJob
from MedDLLib.training_job import TrainingJob
from MedDLSegmentationLib.cohort import dicom_series_cases
from MedDLSegmentationLib.cohort_panel import CohortPanel
from MedDLWidgets.compute_panel import load_saved_compute
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

# The MedDL Segment Editor effect; Slicer names its module after the folder and its class after the file.
EDITOR_EFFECT_SOURCE = Path(__file__).resolve().parent / "SegmentEditorMedDL" / "SegmentEditorEffect.py"


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
            "progress bar moves, Cancel stops it at any moment, and the scene changes only when it succeeds. "
            "The Segment Editor gains a MedDL effect: fill between painted slices, or a model inside a ROI. "
            "The Cohort section segments many inputs (scene volumes, a folder, DICOM series) in one background job."
        )
        self.parent.acknowledgementText = _(
            "Built on PyTorch and MONAI. The default brain-extraction model is deepbet (MIT licence)."
        )
        slicer.app.connect("startupCompleted()", registerEditorEffect)
        # The saved Compute setting (this computer or a MedDL server), for every module, the effect and the console
        slicer.app.connect("startupCompleted()", load_saved_compute)


def registerEditorEffect() -> bool:
    """Add the MedDL effect to the Segment Editor's effects (once Slicer has started, as extensions do)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    if not effect.setPythonSource(EDITOR_EFFECT_SOURCE.as_posix()):  # Slicer has logged the reason
        logging.error("MedDL: the Segment Editor effect %s could not be loaded", EDITOR_EFFECT_SOURCE)
        return False
    effect.self().register()
    return True


@parameterNodeWrapper
class MedDLSegmentationParameterNode:
    """What the panel edits: input volume, model, device and output segmentation."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = catalog.default_model("segmentation")
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    channel2Volume: vtkMRMLScalarVolumeNode
    channel3Volume: vtkMRMLScalarVolumeNode
    channel4Volume: vtkMRMLScalarVolumeNode
    fast: bool = False
    trainVolume: vtkMRMLScalarVolumeNode
    trainSegmentation: vtkMRMLSegmentationNode
    holdOutLast: bool = True
    trainModelName: str = "my-segmentation-model"
    fineTune: bool = False
    trainEpochs: int = 50
    trainMinutes: float = 10.0
    cohortResume: bool = False
    cohortLoadResults: bool = False


def uses_nnunet(model: str) -> bool:
    """Whether `model` (a path or a library id) is an nnU-Net v2 results folder, which needs nnunetv2."""
    try:
        installed = store.installed(model) if store.ID_PATTERN.match(model or "") else None
        path = installed.model_path if installed else Path(model or "")
        return path.is_dir() and nnunet_results_folder(path) is not None
    except Exception:  # noqa: BLE001 - a broken entry or an odd path: the job reports it
        return False


class MedDLSegmentationWidget(MedDLWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: selectors, Apply/Cancel, progress; all work happens in the logic's job."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.cohort = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDLSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDLSegmentationLogic()
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.trainingPairs: list[tuple[str, str]] = []  # (volume node id, segmentation node id)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.cohort = CohortPanel(self)
        self.setupMedDL("segmentation")
        self.ui.cancelButton.connect("clicked(bool)", lambda: self.library.refresh())  # a kept checkpoint shows

    def _setDefaults(self) -> None:
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.inputVolume) and not self.isRunning()
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Segment the input volume") if ready else _("Select an input volume")
        self.ui.trainButton.enabled = bool(self.trainingPairs) and not self.isRunning()
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        fromDicom = bool(volume and volume.GetAttribute(INSTANCE_UIDS))
        self.ui.exportDicomSegButton.enabled = bool(fromDicom and self._parameterNode.outputSegmentation)
        self.ui.exportDicomSegButton.toolTip = (
            _("Write the output segmentation as a DICOM SEG of the input's series, into the DICOM database")
            if fromDicom else _("Needs an input volume loaded from the DICOM database and an output segmentation"))
        if self.cohort:
            self.cohort.updateButtons()

    def enter(self) -> None:
        MedDLWidgetMixin.enter(self)
        if self.cohort:
            self.cohort.refreshDicomSelection()  # the user may have selected series in the DICOM module meanwhile

    def sharedSettings(self) -> Optional[dict]:
        """The Inputs section's model, device and Fast, which Apply and the cohort share; None (and a status line)
        if the user declines the install of MedDL's packages."""
        model = self.ui.modelPathLineEdit.currentPath or self._parameterNode.model
        if not self.dependenciesReady(nnunet=uses_nnunet(model)):
            return None
        return {"model": model, "device": self._parameterNode.device, "fast": self._parameterNode.fast}

    def onApplyButton(self) -> None:
        parameters, settings = self._parameterNode, self.sharedSettings()
        if settings is None:
            return
        try:
            more = [node for node in (parameters.channel2Volume, parameters.channel3Volume, parameters.channel4Volume)
                    if node]
            job = self.logic.start(parameters.inputVolume, settings["model"], settings["device"],
                                   parameters.outputSegmentation, more_volumes=more, fast=settings["fast"])
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start segmentation: {error}").format(error=error))
            return
        self.runner.start(job, _("Segmenting..."), self._applySegmentation)

    def _applySegmentation(self, segmentationNode) -> None:
        self._parameterNode.outputSegmentation = segmentationNode
        self.ui.statusLabel.text = _("Done: {name}").format(name=segmentationNode.GetName())

    def onExportDicomSeg(self) -> None:
        parameters = self._parameterNode
        try:
            path = self.logic.exportDicomSeg(parameters.outputSegmentation, parameters.inputVolume)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot export the DICOM SEG: {error}").format(error=error))
            return
        self.ui.statusLabel.text = _("DICOM SEG added to the DICOM database: {path}").format(path=path)

    def onAddPair(self) -> None:
        volume, segmentation = self._parameterNode.trainVolume, self._parameterNode.trainSegmentation
        if not volume or not segmentation:
            slicer.util.errorDisplay(_("Choose a volume and the segmentation drawn on it."))
            return
        self.trainingPairs.append((volume.GetID(), segmentation.GetID()))
        self.ui.trainingPairsList.addItem(f"{volume.GetName()}  +  {segmentation.GetName()}")
        self._checkCanApply()

    def onRemovePair(self) -> None:
        row = self.ui.trainingPairsList.currentRow
        if 0 <= row < len(self.trainingPairs):
            del self.trainingPairs[row]
            self.ui.trainingPairsList.takeItem(row)
        self._checkCanApply()

    def onTrainButton(self) -> None:
        if not self.dependenciesReady():
            return
        parameters = self._parameterNode
        pairs = [(slicer.mrmlScene.GetNodeByID(v), slicer.mrmlScene.GetNodeByID(s)) for v, s in self.trainingPairs]
        pairs = [pair for pair in pairs if pair[0] and pair[1]]
        validation = pairs[-1:] if parameters.holdOutLast and len(pairs) >= 2 else []
        try:
            job = self.logic.startTraining(pairs[:len(pairs) - len(validation)], parameters.trainModelName,
                                           parameters.trainEpochs, parameters.trainMinutes, parameters.device,
                                           parameters.model if parameters.fineTune else None, validation)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start training: {error}").format(error=error))
            return
        slicer.modules.plots.logic().ShowChartInLayout(job.chart.chart)
        self.runner.start(job, _("Training..."), self._trainingDone)

    def _trainingDone(self, modelId: str) -> None:
        self.library.refresh(modelId)
        self._parameterNode.model = modelId
        self.ui.statusLabel.text = _("Trained {model}: it is selected for Apply.").format(model=modelId)


class MedDLSegmentationLogic(ScriptedLoadableModuleLogic):
    """Console entry point: `slicer.util.getModuleLogic('MedDLSegmentation').process(volume)`."""

    def getParameterNode(self):
        return MedDLSegmentationParameterNode(super().getParameterNode())

    def start(self, inputVolume, model: Optional[str] = None, device: str = "auto",
              outputSegmentation=None, more_volumes=(), fast: bool = False) -> SegmentationJob:
        """Start a background job; poll it (or wait) and call finish() to get the node. `more_volumes`: the
        further channels of a multi-channel model, in its order; `fast`: no test-time augmentation."""
        return SegmentationJob(slicer.mrmlScene, inputVolume, model, device, outputSegmentation,
                               more_volumes=more_volumes, fast=fast)

    def startTraining(self, pairs, modelName: str, epochs: int = 50, minutes: float = 0.0, device: str = "auto",
                      initFrom: Optional[str] = None, validationPairs=()) -> TrainingJob:
        """Train a model from (volume, segmentation) pairs into the model library, in the background."""
        return TrainingJob(slicer.mrmlScene, pairs, modelName, epochs, minutes * 60 or None, device, initFrom,
                           validationPairs)

    def process(self, inputVolume, model: Optional[str] = None, device: str = "auto",
                outputSegmentation=None, timeout: Optional[float] = None, more_volumes=(), fast: bool = False):
        """Segment and wait for the result (scripts and tests); raises with the worker's message."""
        job = self.start(inputVolume, model, device, outputSegmentation, more_volumes, fast)
        return finish_within(job, timeout, "segmentation")

    def startCohort(self, outputFolder, model: Optional[str] = None, device: str = "auto", volumes=(), folder=None,
                    dicomSeriesUIDs=(), loadResults: bool = False, outputFormat: str = "nii.gz", resume: bool = False,
                    fast: bool = False) -> CohortJob:
        """Segment a cohort in the background into `outputFolder` (summary.csv lists every case). One source: volume
        nodes, a folder (image files and DICOM series), or Series Instance UIDs of Slicer's DICOM database. The job's
        `status_table` gets a row per case as it ends; finish() returns the BatchResult (and, with `loadResults`, has
        put each finished case's segmentation into the scene). `outputFormat`: nii.gz, nrrd, mha or dicom-seg."""
        series = dicom_series_cases(slicer.dicomDatabase, dicomSeriesUIDs) if dicomSeriesUIDs else None
        return CohortJob(slicer.mrmlScene, outputFolder, model, device, volumes=list(volumes), folder=folder or None,
                         dicom_series=series, load_results=loadResults, output_format=outputFormat, resume=resume,
                         fast=fast)

    def exportDicomSeg(self, segmentationNode, volumeNode, outputFolder=None) -> str:
        """Write all segments as a DICOM SEG of the series `volumeNode` was loaded from and add it to Slicer's DICOM
        database (as Slicer's own SEG export does); returns the file written, in `outputFolder` or else a new folder
        in Slicer's temporary folder (the database keeps its own copy)."""
        database = slicer.dicomDatabase
        if not database or not database.isOpen:
            raise RuntimeError("Slicer's DICOM database is not open (open the DICOM module once)")
        sources = source_files_of_volume(volumeNode, database)
        folder = Path(outputFolder or tempfile.mkdtemp(prefix="MedDL-SEG-", dir=slicer.app.temporaryPath))
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", segmentationNode.GetName()).strip("._") or "segmentation"
        path = export_dicom_seg(segmentationNode, volumeNode, sources, folder / f"{name}.seg.dcm")
        database.insert(str(path))
        return str(path)


class MedDLSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: the panel (parameters, Apply, Cancel) and the logic, on real sample data; a cohort of
    two small volumes with a small model built here."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_compute_panel_server_then_this_computer()
        self.setUp()
        self.test_panel_brain_extraction()
        self.setUp()
        self.test_panel_cancel_leaves_scene_unchanged()
        self.setUp()
        self.test_brain_extraction_on_sample_data()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()
        self.setUp()
        self.test_editor_effect_fill_apply_undo()
        self.setUp()
        self.test_panel_cohort_of_two_scene_volumes()

    def _sampleVolume(self):
        import SampleData

        return SampleData.SampleDataLogic().downloadMRHead()

    def _panel(self, volume):
        """The module's panel as a user finds it on entering the module (a scene clear drops its parameter node)."""
        widget = slicer.util.getModuleWidget("MedDLSegmentation")
        widget.enter()
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.device = "cpu"
        return widget

    def _checkBrainMask(self, segmentationNode, volume, before):
        """One segment, "Brain", of a plausible size on the input's grid; the input unchanged."""
        self.assertIsNotNone(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Brain")
        brain = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(0), volume)
        self.assertGreater(int(brain.sum()), 100000)
        self.assertTrue((slicer.util.arrayFromVolume(volume) == before).all())

    def test_compute_panel_server_then_this_computer(self):
        """The Compute panel saves a server in Slicer's settings and every job follows it (the model list is the
        server's: none, as nothing answers there, and the error in the status line); back to this computer. The
        user's own setting is restored."""
        self.delayDisplay("Compute panel: a MedDL server, then this computer")
        settings = slicer.app.settings()
        saved = {key: settings.value(key) for key in (SETTINGS_URL, SETTINGS_KEY)}
        widget = slicer.util.getModuleWidget("MedDLSegmentation")
        widget.enter()
        panel = widget.computePanel
        url, key = "http://127.0.0.1:9", "self-test-key"  # the discard port: nothing answers there
        try:
            panel.serverRadioButton.click()
            panel.urlLineEdit.text = url + "/"
            panel.keyLineEdit.text = key
            panel.saveButton.click()
            self.assertEqual(settings.value(SETTINGS_URL), url, panel.statusLabel.text)
            self.assertEqual(settings.value(SETTINGS_KEY), key)
            self.assertEqual((current_compute().server_url, current_compute().api_key), (url, key))
            self.assertEqual(panel.keyLineEdit.text, "")  # the key is never shown back
            self.assertEqual(panel.keyLineEdit.placeholderText, "stored")
            self.assertEqual(widget.ui.modelTable.rowCount, 0)  # no local models in the server's list
            self.assertIn("cannot reach", widget.ui.statusLabel.text)
            self.assertNotIn(key, widget.ui.statusLabel.text + panel.statusLabel.text)
            panel.thisComputerRadioButton.click()
            panel.saveButton.click()
            self.assertEqual(settings.value(SETTINGS_URL), "")
            self.assertEqual(settings.value(SETTINGS_KEY), "")
            self.assertEqual(current_compute().server_url, "")
            local = library_rows("segmentation", widget.ui.modelSearchLineEdit.text,
                                 widget.ui.installedOnlyCheckBox.checked)
            self.assertEqual(widget.ui.modelTable.rowCount, len(local))  # the local library again
        finally:
            for name, value in saved.items():
                if value is None:
                    settings.remove(name)
                else:
                    settings.setValue(name, value)
            load_compute(settings)
            widget.enter()
        self.delayDisplay("Compute panel passed")

    def test_panel_brain_extraction(self):
        self.delayDisplay("Brain extraction of MRHead through the panel")
        volume = self._sampleVolume()
        before = slicer.util.arrayFromVolume(volume).copy()
        widget = self._panel(volume)
        widget._parameterNode.model = "deepbet-brain-extraction"
        widget._parameterNode.outputSegmentation = None
        status = widget.applyAndWait()
        self.assertTrue(status.startswith("Done"), status)
        self._checkBrainMask(widget._parameterNode.outputSegmentation, volume, before)
        self.delayDisplay("Panel brain extraction passed")

    def test_panel_cancel_leaves_scene_unchanged(self):
        widget = self._panel(self._sampleVolume())
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        widget.ui.applyButton.click()
        self.assertTrue(widget.runner.running, widget.ui.statusLabel.text)
        widget.ui.cancelButton.click()
        self.assertFalse(widget.runner.running)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.assertTrue(widget.ui.applyButton.enabled)  # ready for the next run
        self.delayDisplay("Panel cancel passed")

    def test_brain_extraction_on_sample_data(self):
        self.delayDisplay("Brain extraction of MRHead")
        volume = self._sampleVolume()
        before = slicer.util.arrayFromVolume(volume).copy()
        segmentationNode = MedDLSegmentationLogic().process(volume, "deepbet-brain-extraction", "auto")
        self._checkBrainMask(segmentationNode, volume, before)
        self.delayDisplay("Brain extraction passed")

    def test_cancel_leaves_scene_unchanged(self):
        volume = self._sampleVolume()
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        job = MedDLSegmentationLogic().start(volume, "deepbet-brain-extraction", "cpu")
        job.cancel()
        self.assertEqual(job.state, JobState.CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Cancel passed")

    def test_editor_effect_fill_apply_undo(self):
        """The MedDL Segment Editor effect is registered, fills a ball painted on every 6th slice into a preview,
        and Apply writes it as one step of the editor's own Undo."""
        self.delayDisplay("MedDL Segment Editor effect: fill, apply, undo")
        volume = self._sampleVolume()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", "Ball")
        k, j, i = np.ogrid[tuple(slice(0, n) for n in slicer.util.arrayFromVolume(volume).shape)]
        ball = ((k - 65) ** 2 / 2 + (j - 128) ** 2 + (i - 128) ** 2 < 30**2) & (k % 6 == 0)
        slicer.util.updateSegmentBinaryLabelmapFromArray(ball.astype(np.uint8), segmentationNode, segmentId, volume)
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(volume)
        editor.setMaximumNumberOfUndoStates(5)
        editor.setActiveEffectByName("MedDL")
        self.assertIsNotNone(editor.activeEffect(), "the MedDL effect is not registered")
        effect = editor.activeEffect().self()
        effect.scriptedEffect.setParameter("Device", "cpu")
        effect.fillButton.click()
        deadline = time.monotonic() + 600
        while effect.runner.running and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIsNotNone(effect.preview, effect.statusLabel.text)

        def voxels():
            return int(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume).sum())

        self.assertEqual(voxels(), int(ball.sum()))  # only a preview until Apply
        effect.applyButton.click()
        self.assertGreater(voxels(), 2 * int(ball.sum()))  # the slices between are filled
        editor.undo()
        self.assertEqual(voxels(), int(ball.sum()))
        editor.setActiveEffect(None)
        effect.cleanup()
        self.delayDisplay("Segment Editor effect passed")

    def _tinyModel(self) -> str:
        """A small MONAI UNet (fixed random weights) with its model card: quick on the CPU, nothing to download."""
        import json

        import torch
        from monai.networks.nets import UNet

        folder = Path(tempfile.mkdtemp(prefix="meddl-selftest-"))
        args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
                "num_res_units": 0}
        torch.manual_seed(0)
        torch.save(UNet(**args).state_dict(), folder / "model.pt")
        card = {"name": "self-test", "task": "segmentation", "license": "MIT",
                "input": {"channels": 1, "intensity": {"method": "zscore"}}, "inference": {"roi_size": [16, 16, 16]},
                "output": {"mode": "argmax"}, "labels": [{"value": 1, "name": "Label 1"}],
                "network": {"class": "UNet", "args": args}}
        (folder / "model.json").write_text(json.dumps(card))
        return str(folder / "model.pt")

    def test_panel_cohort_of_two_scene_volumes(self):
        """Two volumes checked in the Cohort section: a status row per case, each segmentation loaded."""
        self.delayDisplay("Cohort of two scene volumes through the panel")
        k, j, i = np.mgrid[:24, :20, :28]
        volumes = [slicer.util.addVolumeFromArray(
            (100.0 * ((k - 12) ** 2 + (j - 10) ** 2 + (i - 12 - 2 * n) ** 2 < 40)).astype(np.float32),
            name=f"Cohort case {n}") for n in (1, 2)]
        widget = self._panel(volumes[0])
        widget._parameterNode.model = self._tinyModel()
        widget._parameterNode.cohortLoadResults = True
        ui = widget.ui
        ui.cohortSourceComboBox.currentIndex = 0  # volumes in the scene
        for volume in volumes:
            ui.cohortVolumesSelector.check(volume)
        ui.cohortOutputPathLineEdit.currentPath = tempfile.mkdtemp(prefix="meddl-selftest-cohort-")
        status = widget.cohort.runAndWait()
        self.assertTrue(status.startswith("2 done, 0 failed"), status)
        table = ui.cohortStatusTableView.mrmlTableNode()
        rows = sorted((table.GetCellText(r, 0), table.GetCellText(r, 1)) for r in range(table.GetNumberOfRows()))
        self.assertEqual(rows, [("Cohort_case_1", "done"), ("Cohort_case_2", "done")])
        for volume in volumes:
            segmentation = slicer.mrmlScene.GetFirstNodeByName(f"{volume.GetName()} self-test")
            self.assertIsNotNone(segmentation, volume.GetName())
            self.assertEqual(segmentation.GetSegmentation().GetNthSegment(0).GetName(), "Label 1")
        self.delayDisplay("Panel cohort passed")
