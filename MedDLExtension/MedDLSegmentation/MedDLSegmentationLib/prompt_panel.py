"""The MedDL Segment Editor effect's Promptable model mode: its widgets, its tool buttons and the prompt session
(`MedDLLib.interactive_segmentation`) that prompts placed in the views (`MedDLLib.prompt_markups`) run in, one
interaction at a time on the effect's job runner."""

from __future__ import annotations

from typing import Any, Callable, Optional

import qt
import slicer
from MedDLLib.dependencies import promptable_family

PROMPT_TOOLS = (("positive", "+ Point", "Click where the object is"), ("negative", "- Point", "Click where it is not"),
                ("box", "Box", "Drag a box on a slice (2D)"), ("box3d", "3D box", "A box around the whole object"),
                ("scribble", "Scribble", "Draw a curve; right-click ends it"),
                ("lasso", "Lasso", "Outline on a slice; right-click closes it"))


def _promptLogic():
    """MedDLLib.interactive_segmentation, imported on first use: after the first-use install of MedDL's packages
    (see the effect's module docstring)."""
    from MedDLLib import interactive_segmentation

    return interactive_segmentation


class PromptPanel:
    """Drives the promptable mode's frame of the effect's options.

    `effect` is the SegmentEditorEffect: its `scriptedEffect` (parameters PromptModel, PromptModelPath,
    PromptNegative, Device), `runner`, `statusLabel`, `editorNodes()`, `dependenciesReady()`, `updateMRMLFromGUI`
    and `updateButtons()`. `frame` and `layout` are the effect's options frame for this mode.
    """

    def __init__(self, effect, frame, layout) -> None:
        self.effect, self.scriptedEffect, self.frame = effect, effect.scriptedEffect, frame
        self.prompts = None  # a PromptSegmentation, for `key`'s nodes, segment and model
        self.key: Optional[tuple] = None
        self.markups = None  # the PromptMarkups prompts are placed with
        self.modelSelector = qt.QComboBox()
        self.modelSelector.toolTip = "Installed promptable models (nnInteractive, SAM 2) of the MedDL library"
        self.modelSelector.connect("currentIndexChanged(int)", effect.updateMRMLFromGUI)
        layout.addRow("Model:", self.modelSelector)
        self.pathEdit = qt.QLineEdit()
        self.pathEdit.placeholderText = "or an nnInteractive model folder or SAM 2 checkpoint"
        self.pathEdit.connect("editingFinished()", effect.updateMRMLFromGUI)
        layout.addRow("Path:", self.pathEdit)
        self.licenceLabel = qt.QLabel("")
        self.licenceLabel.wordWrap = True
        layout.addRow("Licence:", self.licenceLabel)
        self.toolButtons, row = {}, qt.QHBoxLayout()
        for tool, text, toolTip in PROMPT_TOOLS:
            button = qt.QPushButton(text)
            button.checkable, button.toolTip = True, toolTip
            button.connect("clicked()", lambda tool=tool: self.onTool(tool))
            row.addWidget(button)
            self.toolButtons[tool] = button
        layout.addRow(row)
        self.negativeCheckBox = qt.QCheckBox("Boxes, scribbles and lassos remove (negative)")
        self.negativeCheckBox.connect("toggled(bool)", effect.updateMRMLFromGUI)
        layout.addRow(self.negativeCheckBox)
        row, buttons = qt.QHBoxLayout(), []
        for text, toolTip, slot in (
                ("Undo last prompt", "Take the last prompt back", self.onUndo),
                ("Reset interactions", "Forget every prompt and the preview", self.reset),
                ("Seed from segment", "Start from the selected segment as it is now", self.onSeed)):
            buttons.append(qt.QPushButton(text))
            buttons[-1].toolTip = toolTip
            buttons[-1].clicked.connect(slot)
            row.addWidget(buttons[-1])
        self.undoButton, self.resetButton, self.seedButton = buttons
        layout.addRow(row)

    # ---- parameters and widgets

    def model(self) -> str:
        return self.scriptedEffect.parameter("PromptModelPath") or self.scriptedEffect.parameter("PromptModel")

    def updateGUIFromMRML(self) -> None:
        """The check box and path from the parameters (the model selector is among the effect's combo boxes)."""
        widgets = [self.negativeCheckBox, self.pathEdit]
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.negativeCheckBox.checked = self.scriptedEffect.integerParameter("PromptNegative") != 0
        self.pathEdit.text = self.scriptedEffect.parameter("PromptModelPath")
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self) -> None:
        self.scriptedEffect.setParameter("PromptNegative", "1" if self.negativeCheckBox.checked else "0")
        self.scriptedEffect.setParameter("PromptModelPath", self.pathEdit.text.strip())

    def updateButtons(self, mode: str, running: bool) -> None:
        """Shown in the promptable mode only (placing stops in the others); the buttons and the model's licence."""
        self.frame.visible = mode == "prompt"
        if mode != "prompt" and self.markups is not None and self.markups.tool:
            self.markups.stop()
            self.onPlacingStopped()
        self.undoButton.enabled = bool(self.prompts and self.prompts.history) and not running
        self.resetButton.enabled = self.prompts is not None
        self.seedButton.enabled = not running
        if self.prompts is not None and self.prompts.last_result is not None:
            self.licenceLabel.text = self.prompts.last_result.license or "not stated by the model"
        elif self.scriptedEffect.parameter("PromptModelPath"):  # its LICENSE file, once MedDL's packages are there
            known = _promptLogic().model_licence(self.model()) if self.prompts is not None else ""
            self.licenceLabel.text = known or "shown after the first prompt"
        else:
            index = self.modelSelector.currentIndex
            self.licenceLabel.text = str(self.modelSelector.itemData(index, qt.Qt.ToolTipRole) or "")

    # ---- the session and its interactions

    def session(self):
        """The prompt session for the editor's segmentation, selected segment, source volume, model and device (a
        new one when any of them changed: the old one's preview goes); None after telling the user what is
        missing. The model's family's package is installed on its first use."""
        nodes = self.effect.editorNodes()
        if nodes is None:
            return None
        editorNode, segmentationNode, volume = nodes
        segmentId, model = editorNode.GetSelectedSegmentID(), self.model()
        device = self.scriptedEffect.parameter("Device")
        key = (segmentationNode.GetID(), segmentId, volume.GetID(), model, device)
        if self.prompts is not None and key == self.key:
            return self.prompts
        if not segmentId or not model:
            slicer.util.errorDisplay("MedDL: select the segment to work on and a promptable model.")
            return None
        family = promptable_family(model)
        if not self.effect.dependenciesReady(nninteractive=family == "nnInteractive", sam2=family == "SAM 2"):
            return None
        self._endSession()
        try:
            self.prompts = _promptLogic().PromptSegmentation(segmentationNode, segmentId, volume, model, device)
        except Exception as error:  # noqa: BLE001 - the message is the user's to act on
            slicer.util.errorDisplay(f"MedDL: {error}")
            return None
        self.key = key
        return self.prompts

    def onTool(self, tool: str) -> None:
        """A tool button: place its markups in the views (points one after another, boxes and curves one at a
        time); clicked again, placing stops."""
        checked = self.toolButtons[tool].checked
        for other, button in self.toolButtons.items():
            button.checked = checked and other == tool
        if self.markups is not None:
            self.markups.stop()
        if not checked or self.session() is None:
            self.toolButtons[tool].checked = False
            return
        if self.markups is None:
            from MedDLLib.prompt_markups import PromptMarkups

            logic = slicer.app.applicationLogic()
            self.markups = PromptMarkups(slicer.mrmlScene, logic.GetInteractionNode(), logic.GetSelectionNode(),
                                         self.onPlaced, self.onPlacingStopped)
        self.markups.start(tool)

    def onPlacingStopped(self) -> None:
        for button in self.toolButtons.values():
            button.checked = False

    def onPlaced(self, tool: str) -> None:
        """A prompt was placed: it runs now, or with the next interaction; a box or curve makes room for the next."""
        session = self.session()
        if session is None:
            return
        try:
            prompts = self.markups.take(tool, session.image, self.scriptedEffect.integerParameter("PromptNegative"))
        except Exception as error:  # noqa: BLE001 - e.g. a lasso across slices: the user's to redraw
            slicer.util.errorDisplay(f"MedDL: {error}")
            prompts = []
        if tool not in ("positive", "negative"):
            qt.QTimer.singleShot(0, lambda: self.markups and self.markups.resume())  # once this placing ended
        if prompts:
            self._startInteraction(lambda: session.submit(*prompts), "Segmenting from the new prompt...")

    def _startInteraction(self, makeJob: Callable[[], Any], title: str) -> None:
        """Start an interaction; None (nothing to run now) or an error leaves the markups showing the history."""
        try:
            job = makeJob()
        except Exception as error:  # noqa: BLE001 - the message is the user's to act on
            slicer.util.errorDisplay(f"MedDL: {error}")
            job = None
        if job is not None:
            self.effect.runner.start(job, title, self._onInteraction)
        qt.QTimer.singleShot(0, self._showMarkups)  # not inside the views' own placing events
        self.effect.updateButtons()

    def _onInteraction(self, preview) -> None:
        count = len(self.prompts.history)
        self.effect.statusLabel.text = (f"Preview updated in {self.prompts.timing()} ({count} prompt"
                                        f"{'' if count == 1 else 's'}, device "
                                        f"{self.scriptedEffect.parameter('Device')}): "
                                        "Apply writes it into the selected segment.")

    def onRunningChanged(self, running: bool) -> None:
        """After an interaction, the prompts placed meanwhile run (a failed or cancelled one dropped them)."""
        if not running and self.prompts is not None:
            self._showMarkups()
            qt.QTimer.singleShot(0, lambda: self.prompts and self._startInteraction(
                self.prompts.run_waiting, "Segmenting from the prompts placed meanwhile..."))

    def _showMarkups(self) -> None:
        if self.markups is not None and self.prompts is not None:
            self.markups.show(self.prompts.shown())

    def onUndo(self) -> None:
        if self.prompts is not None and not self.effect.runner.running:
            self._startInteraction(self.prompts.undo_prompt, "Taking the last prompt back...")

    def onSeed(self) -> None:
        session = self.session()
        if session is not None and not self.effect.runner.running:
            self._startInteraction(session.seed_from_segment, "Starting from the segment as it is...")

    def reset(self) -> None:
        """Forget every prompt and the preview (Reset interactions, or Cancel preview in this mode)."""
        self._cancelInteraction()
        if self.prompts is not None:
            self.prompts.reset()
        self._showMarkups()
        self.effect.statusLabel.text = "Prompts and preview cleared; nothing was changed."
        self.effect.updateButtons()

    def apply(self, logicFor: Callable[[Any], Any]) -> None:
        """Write the preview into the selected segment through `logicFor(segmentationNode)`, the editor's logic."""
        editorNode, target = self.scriptedEffect.parameterSetNode(), self.prompts and self.prompts.segmentation_node
        if target is None or editorNode is None:
            return
        if editorNode.GetSegmentationNode() is not target:
            slicer.util.errorDisplay(f"MedDL: the preview is for {target.GetName()}; select it in the editor.")
            return
        try:
            self.prompts.apply(logicFor(target))
            self.effect.statusLabel.text = "Applied; Undo takes it back. More prompts refine it further."
        except Exception as error:  # noqa: BLE001 - shown to the user; Undo restores what was written
            slicer.util.errorDisplay(f"MedDL: cannot apply the preview: {error}")
        self.effect.updateButtons()

    def _cancelInteraction(self) -> None:
        """Stop the running interaction (not another mode's job) as the Cancel button would."""
        runner = self.effect.runner
        if runner is not None and self.prompts is not None and getattr(runner.job, "session", None) is self.prompts:
            runner.cancel()

    def _endSession(self) -> None:
        self._cancelInteraction()
        if self.prompts is not None:
            self.prompts.close()  # removes its preview and folder
        self.prompts = self.key = None

    def close(self) -> None:
        """The prompt session goes, with the markups prompts were placed with (placing stops)."""
        self._endSession()
        if self.markups is not None:
            self.markups.remove()
            self.markups = None
