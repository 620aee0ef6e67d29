"""What every MedDL module widget shares: the parameter-node lifecycle of Slicer's template, the
model library panel, the Compute panel and the job runner, written once."""

from __future__ import annotations

import time

import slicer
import vtk
from MedDLLib.compute import current_compute
from MedDLLib.dependencies import ensure_dependencies
from MedDLLib.jobs import shut_down_workers
from MedDLLib.model_library import slicer_models_dir, use_models_dir
from slicer.i18n import tr as _

from .compute_panel import ComputePanel
from .job_runner import JobRunner
from .model_library_panel import ModelLibraryPanel


class MedDLWidgetMixin:
    """Mixed into a ScriptedLoadableModuleWidget that is also a VTKObservationMixin.

    The module sets `self.ui` and `self.logic`, defines `_checkCanApply()`, calls
    `setupMedDL(task)` in `setup()`, and may override `_setDefaults()`.
    """

    _parameterNode = None
    _parameterNodeGuiTag = None
    runner = None
    library = None
    computePanel = None

    def setupMedDL(self, task: str, withLibrary: bool = True) -> None:
        """The shared parts; the Compute section (built here, the same in every module) goes above Apply. The saved
        Compute setting was loaded when Slicer started (compute_panel.load_saved_compute)."""
        use_models_dir(slicer_models_dir(slicer.app.slicerUserSettingsFilePath))
        if withLibrary:
            self.library = ModelLibraryPanel(self.ui, task, self.onModelSelected, self._runLibraryJob)
        self.computePanel = ComputePanel(self.onComputeChanged)
        self.computePanel.placeAbove(self.ui.applyButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.runner = JobRunner(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton,
                                lambda running: self._checkCanApply())
        self.initializeParameterNode()
        if self.library:
            self.library.refresh(self._parameterNode.model)

    def _runLibraryJob(self, job, title: str, done) -> None:
        self.runner.start(job, title, lambda _result: done())

    def dependenciesReady(self, nnunet: bool = False) -> bool:
        """Offer the first-use install of MedDL's Python packages (`nnunet`: with those nnU-Net models need);
        False (and a status line) if declined."""
        if ensure_dependencies(lambda message: slicer.util.confirmOkCancelDisplay(message), nnunet):
            return True
        self.ui.statusLabel.text = _("MedDL's Python packages are not installed.")
        return False

    def applyAndWait(self, timeout: float = 600.0) -> str:
        """Press Apply and let the panel's timer poll the job until it ends (self-tests, scripts); returns the
        status line. Raises when Apply is disabled or no job starts; cancels and raises past `timeout`."""
        if not self.ui.applyButton.enabled:
            raise RuntimeError(f"Apply is disabled: {self.ui.applyButton.toolTip}")
        self.ui.applyButton.click()
        if not self.isRunning():
            raise RuntimeError(f"Apply started no job: {self.ui.statusLabel.text}")
        deadline = time.monotonic() + timeout
        while self.isRunning() and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        if self.isRunning():
            self.runner.cancel()
            raise TimeoutError(f"no result within {timeout:.0f} s")
        return self.ui.statusLabel.text

    def onComputeChanged(self) -> None:
        """The Compute setting was saved or tested here: the model list follows it."""
        if self.library:
            self.library.refresh()

    def isRunning(self) -> bool:
        return bool(self.runner and self.runner.running)

    def onModelSelected(self, modelId: str) -> None:
        if self._parameterNode:
            self._parameterNode.model = modelId

    def cleanup(self) -> None:
        if self.runner:
            self.runner.cancel()
        shut_down_workers()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.computePanel:  # another module may have changed the shared Compute setting
            self.computePanel.refresh()
        if self.library and self.library.shownCompute != current_compute():
            self.library.refresh()

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
        self._setDefaults()

    def _setDefaults(self) -> None:
        """Fill empty parameters from the scene (override where useful)."""

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()
