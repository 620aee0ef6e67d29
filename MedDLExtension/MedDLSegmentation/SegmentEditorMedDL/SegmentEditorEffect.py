"""The MedDL Segment Editor effect (issue 17): the Qt side of `MedDLLib.segment_editor` and
`MedDLLib.interactive_segmentation`.

Three modes: fill the chosen segments between their painted slices (each Fill after the first starts from the
previous round's network); segment the source volume with a library model, optionally inside a markups ROI; or
segment the selected segment with a promptable model (nnInteractive, SAM 2) from points, boxes, scribbles and
lassos placed in the views, each prompt updating the preview. All run on MedDL's background worker behind a
progress bar and Cancel, and end in a preview node; Apply writes it through the Segment Editor's own logic (its
masking settings, one step of its Undo).

MedDLLib.segment_editor and MedDLLib.interactive_segmentation (and the engine modules they name) are imported
after `ensure_dependencies` (see `_editorLogic`), so loading the effect at start-up costs nothing and never
depends on MedDL's packages. The promptable mode's panel is MedDLSegmentationLib.prompt_panel.
Slicer loads this file with `setPythonSource`: the folder name is the module name, the class is
`SegmentEditorEffect`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import qt
import slicer
import vtk
from meddl.device import DEVICE_CHOICES
from meddl.errors import MeddlError
from MedDLLib.compute import model_rows_for
from MedDLLib.dependencies import ensure_dependencies
from MedDLLib.model_library import slicer_models_dir, use_models_dir
from MedDLWidgets.job_runner import JobRunner
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

ICON = Path(__file__).resolve().parent.parent / "Resources" / "Icons" / "SegmentEditorMedDL.png"
MODES = (("fill", "Fill from drawn slices"), ("model", "Segment with a model"), ("prompt", "Promptable model"))
PROMPT_TASK = "promptable"  # the task of promptable models in the library (meddl.tasks)
SEGMENT_CHOICES = (("visible", "All visible segments"), ("selected", "Selected segment"))
MODIFICATION_MODES = ("ModificationModeSet", "ModificationModeAdd", "ModificationModeRemove",
                      "ModificationModeRemoveAll")


def _editorLogic():
    """MedDLLib.segment_editor, imported on first use (see the module docstring)."""
    from MedDLLib import segment_editor

    return segment_editor


def sourceVolumeOf(editorNode) -> Any:
    """The editor's source volume (Slicer < 5.2 calls it the master volume)."""
    getter = getattr(editorNode, "GetSourceVolumeNode", None) or editorNode.GetMasterVolumeNode
    return getter()


def visibleSegmentIds(segmentationNode) -> list[str]:
    """The ids of the segments shown, in the segmentation's order."""
    allIds, shown = vtk.vtkStringArray(), vtk.vtkStringArray()
    segmentationNode.GetSegmentation().GetSegmentIDs(allIds)
    display = segmentationNode.GetDisplayNode()
    ids = [allIds.GetValue(i) for i in range(allIds.GetNumberOfValues())]
    if display is None:
        return ids
    display.GetVisibleSegmentIDs(shown)
    visible = {shown.GetValue(i) for i in range(shown.GetNumberOfValues())}
    return [segmentId for segmentId in ids if segmentId in visible]


class EditorOwnLogic:
    """What `apply_preview` asks of a vtkSlicerSegmentEditorLogic, answered through the effect's own API.

    The editor widget's logic is not reachable from a scripted effect (Slicer >= 5.10 keeps it private in
    qSlicerSegmentEditorAbstractEffect), but `saveStateForUndo` and `modifySegmentByLabelmap` reach it: the
    write then obeys the editor's masking and lands in the editor's own Undo history, not in a logic of
    ours whose history the Undo button never sees.
    """

    def __init__(self, scriptedEffect, segmentationNode) -> None:
        self.scriptedEffect, self.segmentationNode = scriptedEffect, segmentationNode

    def GetSegmentationNode(self):
        return self.segmentationNode

    def SaveStateForUndo(self) -> None:
        self.scriptedEffect.saveStateForUndo()

    def ModifySegmentByLabelmap(self, segmentationNode, segmentId: str, labelmap, mode: int, isPerSegment: bool,
                                bypassMasking: bool) -> None:
        name = next(n for n in MODIFICATION_MODES if getattr(slicer.vtkSlicerSegmentEditorLogic, n) == mode)
        self.scriptedEffect.modifySegmentByLabelmap(segmentationNode, segmentId, labelmap,
                                                    getattr(self.scriptedEffect, name), bypassMasking)


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Fill between drawn slices, or a library model (inside an optional ROI), previewed, then applied."""

    def __init__(self, scriptedEffect) -> None:
        scriptedEffect.name = "MedDL"  # modules and tests find effects by this name: not translated
        if hasattr(scriptedEffect, "title"):
            scriptedEffect.title = "MedDL"
        scriptedEffect.perSegment = False  # it works on several segments, or adds new ones
        scriptedEffect.requireSegments = False  # a model can segment into an empty segmentation
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.runner: Optional[JobRunner] = None
        self.session = None  # a FillSession, kept across rounds (and across switching to Paint and back)
        self.preview = None
        self.previewTarget = None  # the segmentation node the preview was made for
        self.sceneObserver: Optional[int] = None
        self.prompt = None  # the PromptPanel (promptable mode), made with the options panel

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        return qt.QIcon(str(ICON)) if ICON.is_file() else qt.QIcon()

    def helpText(self) -> str:
        return ("<html>Deep-learning segmentation in the editor, in a background process (progress and Cancel)."
                "<p><b>Fill from drawn slices</b>: paint each segment on a few slices (any axes), press Fill: a "
                "small network learns your slices and fills the ones between. Paint more and press Fill again: "
                "the next round starts from the last network.<p><b>Segment with a model</b>: an installed "
                "segmentation model of the MedDL library on the source volume, optionally only inside a markups "
                "ROI, into new segments or into the selected segment.<p><b>Promptable model</b>: choose a tool and "
                "place positive or negative points, a box, a scribble or a lasso in the views: each prompt "
                "updates the selected segment's preview. Undo last prompt, Reset, or Seed from segment (start "
                "from the segment as it is).<p>All show a preview first; Apply writes it obeying the editor's "
                "masking settings, and one Undo takes it back.</html>")

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor  # no painting in the views: the usual cursor

    def setMRMLDefaults(self) -> None:
        for name, value in (("Mode", "fill"), ("Segments", "visible"), ("Device", "auto"), ("Model", ""),
                            ("IntoSelected", "0"), ("PromptModel", ""), ("PromptModelPath", ""),
                            ("PromptNegative", "0")):
            self.scriptedEffect.setParameterDefault(name, value)

    # ---- options panel

    def setupOptionsFrame(self) -> None:
        from MedDLSegmentationLib.prompt_panel import PromptPanel  # beside the module that registered this effect

        use_models_dir(slicer_models_dir(slicer.app.slicerUserSettingsFilePath))
        self.modeSelector = self._combo(MODES, "What the effect does")
        self.scriptedEffect.addLabeledOptionsWidget("Mode:", self.modeSelector)
        self.fillFrame, fillLayout = self._frame()
        self.segmentsSelector = self._combo(SEGMENT_CHOICES, "The segments to fill; each needs a few painted slices")
        fillLayout.addRow("Segments:", self.segmentsSelector)
        self.fillButton = qt.QPushButton("Fill")
        self.fillButton.clicked.connect(self.onFill)
        fillLayout.addRow(self.fillButton)
        self._setupModelFrame()
        self.prompt = PromptPanel(self, *self._frame())
        self.deviceSelector = self._combo([(device, device) for device in DEVICE_CHOICES], "Where the network runs")
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceSelector)
        self._setupProgressAndPreview()
        self.sceneObserver = slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

    def _setupModelFrame(self) -> None:
        self.modelFrame, modelLayout = self._frame()
        self.modelSelector = qt.QComboBox()
        self.modelSelector.toolTip = "Installed segmentation models (MedDL Segmentation installs more)"
        self.modelSelector.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        modelLayout.addRow("Model:", self.modelSelector)
        self.roiSelector = slicer.qMRMLNodeComboBox()
        self.roiSelector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        self.roiSelector.noneEnabled = True
        self.roiSelector.addEnabled = False
        self.roiSelector.removeEnabled = False
        self.roiSelector.noneDisplay = "(whole volume)"
        self.roiSelector.toolTip = "Segment only inside this markups ROI"
        self.roiSelector.setMRMLScene(slicer.mrmlScene)
        self.roiSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateMRMLFromGUI)
        modelLayout.addRow("Inside ROI:", self.roiSelector)
        self.intoSelectedCheckBox = qt.QCheckBox("Into the selected segment")
        self.intoSelectedCheckBox.toolTip = "Every label goes into the selected segment instead of new segments"
        self.intoSelectedCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        modelLayout.addRow(self.intoSelectedCheckBox)
        self.segmentButton = qt.QPushButton("Segment")
        self.segmentButton.clicked.connect(self.onSegment)
        modelLayout.addRow(self.segmentButton)

    def _setupProgressAndPreview(self) -> None:
        self.progressBar, self.statusLabel = qt.QProgressBar(), qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.cancelButton = qt.QPushButton("Cancel")
        row = qt.QHBoxLayout()
        row.addWidget(self.progressBar)
        row.addWidget(self.cancelButton)
        self.scriptedEffect.addOptionsWidget(row)
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.applyButton, self.discardButton = qt.QPushButton("Apply"), qt.QPushButton("Cancel preview")
        self.applyButton.toolTip = "Write the preview into the segmentation (one Undo step)"
        self.applyButton.clicked.connect(self.onApply)
        self.discardButton.clicked.connect(self.onDiscard)
        row = qt.QHBoxLayout()
        row.addWidget(self.applyButton)
        row.addWidget(self.discardButton)
        self.scriptedEffect.addOptionsWidget(row)
        self.runner = JobRunner(self.progressBar, self.statusLabel, self.cancelButton, self._onRunningChanged)

    def _combo(self, items, toolTip: str):
        combo = qt.QComboBox()
        for value, text in items:
            combo.addItem(text, value)
        combo.toolTip = toolTip
        combo.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        return combo

    def _frame(self):
        frame = qt.QFrame()
        layout = qt.QFormLayout(frame)
        layout.setContentsMargins(0, 0, 0, 0)
        self.scriptedEffect.addOptionsWidget(frame)
        return frame, layout

    def refreshModels(self) -> None:
        """List the installed, usable segmentation and promptable models where jobs run (this computer's library,
        or the MedDL server's of the Compute setting; none, with the reason, when the server cannot be reached)."""
        for selector, task, kind in ((self.modelSelector, "segmentation", "segmentation"),
                                     (self.prompt.modelSelector, PROMPT_TASK, "promptable")):
            try:
                rows = [row for row in model_rows_for(task, installed_only=True) if not row.broken]
            except (MeddlError, ValueError) as error:
                rows = []
                self.statusLabel.text = f"The server's models cannot be listed: {error}"
            wasBlocked = selector.blockSignals(True)
            selector.clear()
            for row in rows:
                selector.addItem(row.title or row.id, row.id)
                selector.setItemData(selector.count - 1, row.license, qt.Qt.ToolTipRole)
            if not rows:
                selector.addItem(f"(no {kind} model installed: see MedDL Segmentation's library)", "")
            selector.blockSignals(wasBlocked)
        self.updateGUIFromMRML()
        self.updateMRMLFromGUI()  # a remembered model that is gone is not the one Segment would run

    def updateGUIFromMRML(self) -> None:
        if not self.scriptedEffect.parameterSetNode() or self.runner is None:
            return
        widgets = [self.roiSelector, self.intoSelectedCheckBox, *(combo for combo, _name in self._combos())]
        blocked = [widget.blockSignals(True) for widget in widgets]
        for combo, name in self._combos():
            combo.setCurrentIndex(max(combo.findData(self.scriptedEffect.parameter(name)), 0))
        self.roiSelector.setCurrentNode(self.scriptedEffect.nodeReference("ROI"))
        self.intoSelectedCheckBox.checked = self.scriptedEffect.integerParameter("IntoSelected") != 0
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self.prompt.updateGUIFromMRML()
        self.updateButtons()

    def _combos(self) -> list[tuple[Any, str]]:
        return [(self.modeSelector, "Mode"), (self.segmentsSelector, "Segments"), (self.deviceSelector, "Device"),
                (self.modelSelector, "Model"), (self.prompt.modelSelector, "PromptModel")]

    def updateMRMLFromGUI(self, *unused) -> None:
        if not self.scriptedEffect.parameterSetNode() or self.runner is None:
            return
        for combo, name in self._combos():
            if combo.currentIndex >= 0:
                self.scriptedEffect.setParameter(name, str(combo.itemData(combo.currentIndex) or ""))
        self.scriptedEffect.setParameter("IntoSelected", "1" if self.intoSelectedCheckBox.checked else "0")
        self.prompt.updateMRMLFromGUI()
        self.scriptedEffect.setNodeReference("ROI", self.roiSelector.currentNode())
        self.updateButtons()

    def updateButtons(self) -> None:
        if not self.scriptedEffect.parameterSetNode():
            return
        running, mode = bool(self.runner and self.runner.running), self.scriptedEffect.parameter("Mode")
        self.fillFrame.visible, self.modelFrame.visible = mode not in ("model", "prompt"), mode == "model"
        self.prompt.updateButtons(mode, running)
        self.fillButton.enabled = not running
        rounds = self.session.rounds if self.session is not None and self.session.state is not None else 0
        self.fillButton.text = f"Fill again (starts from round {rounds})" if rounds else "Fill"
        self.segmentButton.enabled = not running and bool(self.scriptedEffect.parameter("Model"))
        session = self.prompt.prompts if mode == "prompt" else None
        previewed = (session.preview if session else self.preview) is not None
        self.applyButton.enabled = self.discardButton.enabled = previewed and not running

    # ---- jobs

    def editorNodes(self) -> Optional[tuple]:
        """(segment editor node, segmentation node, source volume), or None after telling the user what is missing."""
        editorNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = editorNode.GetSegmentationNode() if editorNode else None
        volume = sourceVolumeOf(editorNode) if editorNode else None
        if not segmentationNode or not volume:
            slicer.util.errorDisplay("MedDL: select a segmentation and a source volume in the Segment Editor.")
            return None
        return editorNode, segmentationNode, volume

    def dependenciesReady(self, **needs: bool) -> bool:
        """The first-use install of MedDL's Python packages, and of those the model needs (`ensure_dependencies`'s
        nnunet, nninteractive, sam2), as the MedDL modules offer it."""
        if ensure_dependencies(lambda message: slicer.util.confirmOkCancelDisplay(message), **needs):
            return True
        self.statusLabel.text = "MedDL's Python packages are not installed."
        return False

    def onFill(self) -> None:
        nodes = self.editorNodes()
        if nodes is None or not self.dependenciesReady():
            return
        editorNode, segmentationNode, volume = nodes
        if self.scriptedEffect.parameter("Segments") == "selected":
            segmentIds = [editorNode.GetSelectedSegmentID()] if editorNode.GetSelectedSegmentID() else []
        else:
            segmentIds = visibleSegmentIds(segmentationNode)
        if self.session is None:
            self.session = _editorLogic().FillSession()
        device = self.scriptedEffect.parameter("Device")
        self._startJob(lambda: self.session.start(segmentationNode, segmentIds, volume, device), segmentationNode,
                       "Filling between the painted slices...")

    def onSegment(self) -> None:
        from MedDLSegmentation import uses_nnunet  # the module that registered this effect

        nodes, model = self.editorNodes(), self.scriptedEffect.parameter("Model")
        if nodes is None or not self.dependenciesReady(nnunet=uses_nnunet(model)):
            return
        editorNode, segmentationNode, volume = nodes
        into = None
        if self.scriptedEffect.integerParameter("IntoSelected"):
            into = editorNode.GetSelectedSegmentID()
            if not into:
                slicer.util.errorDisplay("MedDL: select the segment the model's labels go into.")
                return
        roi, device = self.scriptedEffect.nodeReference("ROI"), self.scriptedEffect.parameter("Device")
        self._startJob(lambda: _editorLogic().ModelJob(segmentationNode, volume, model, device, roi, into),
                       segmentationNode, f"Segmenting with {model}...")

    def _startJob(self, makeJob: Callable[[], Any], segmentationNode, title: str) -> None:
        """Start a job (the previous preview goes); errors such as InputError are shown, never a traceback."""
        self._discardPreview()
        try:
            job = makeJob()
        except Exception as error:  # noqa: BLE001 - the message is the user's to act on
            slicer.util.errorDisplay(f"MedDL: {error}")
            return
        note = " (started from the previous round)" if getattr(job, "warm_start", False) else ""
        self.runner.start(job, title, lambda preview: self._onPreview(preview, segmentationNode, note))

    def _onPreview(self, preview, segmentationNode, note: str) -> None:
        self.preview, self.previewTarget = preview, segmentationNode
        self.statusLabel.text = f"Preview ready{note}: Apply writes it into {segmentationNode.GetName()}."
        self.updateButtons()

    def onApply(self) -> None:
        if self.scriptedEffect.parameter("Mode") == "prompt":
            self.prompt.apply(lambda target: EditorOwnLogic(self.scriptedEffect, target))
            return
        preview, target = self.preview, self.previewTarget
        editorNode = self.scriptedEffect.parameterSetNode()
        if preview is None or editorNode is None:
            return
        if editorNode.GetSegmentationNode() is not target:
            slicer.util.errorDisplay(f"MedDL: the preview is for {target.GetName()}; select it in the editor "
                                     "to apply it, or cancel the preview.")
            return
        self.preview = self.previewTarget = None
        try:
            written = _editorLogic().apply_preview(preview, EditorOwnLogic(self.scriptedEffect, target))
            self.statusLabel.text = f"Applied to {len(written)} segment(s); Undo takes it back."
        except Exception as error:  # noqa: BLE001 - shown to the user; Undo restores what was written
            _editorLogic().discard_preview(preview)
            slicer.util.errorDisplay(f"MedDL: cannot apply the preview: {error}")
        self.updateButtons()

    def onDiscard(self) -> None:
        if self.scriptedEffect.parameter("Mode") == "prompt":
            self.prompt.reset()
            return
        self._discardPreview()
        self.statusLabel.text = "Preview discarded; nothing was changed."

    def _discardPreview(self) -> None:
        if self.preview is not None:
            _editorLogic().discard_preview(self.preview)
        self.preview = self.previewTarget = None
        if self.runner is not None:
            self.updateButtons()

    def _onRunningChanged(self, running: bool) -> None:
        if self.runner is None:
            return
        self.prompt.onRunningChanged(running)
        self.updateButtons()

    # ---- lifecycle

    def activate(self) -> None:
        self.refreshModels()  # models may have been installed since

    def deactivate(self) -> None:
        """A running job stops and a pending preview goes, with the prompts and their markups; the fill session
        stays, so after painting more slices with another effect the next Fill still starts from the last round."""
        if self.runner is not None:
            self.runner.cancel()
        self._discardPreview()
        if self.prompt is not None:
            self.prompt.close()
            self.prompt.onPlacingStopped()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.deactivate()
        self._closeSession()

    def _closeSession(self) -> None:
        if self.session is not None:
            self.session.close()  # removes its folder and the networks kept in it
            self.session = None

    def cleanup(self) -> None:
        """Stop the job, drop the preview and the session, without touching the options widgets (the editor may
        have deleted them already)."""
        if self.runner is not None:
            self.runner.timer.stop()
            if self.runner.job is not None:
                self.runner.job.cancel()
                self.runner.job = None
        if self.preview is not None:
            _editorLogic().discard_preview(self.preview)
            self.preview = self.previewTarget = None
        self._closeSession()
        if self.prompt is not None:
            self.prompt.close()
        if self.sceneObserver is not None:
            slicer.mrmlScene.RemoveObserver(self.sceneObserver)
            self.sceneObserver = None
