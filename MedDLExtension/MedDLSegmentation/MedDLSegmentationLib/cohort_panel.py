"""The Segmentation panel's Cohort section: several inputs segmented as one background job, a row per case."""

from __future__ import annotations

import logging
import time

import ctk
import slicer
from slicer.i18n import tr as _

from .cohort import OUTPUT_FORMATS, SOURCES, cohort_problem


def selected_dicom_series_uids() -> list[str]:
    """The Series Instance UIDs selected in Slicer's DICOM browser (the visual browser when it is the one in use,
    else the table browser); none while the DICOM module has not been opened."""
    browser = getattr(getattr(slicer.modules, "DICOMInstance", None), "browserWidget", None)
    if browser is None:  # the module widget holds the same SlicerDICOMBrowser once created
        browser = getattr(getattr(slicer.modules, "DICOMWidget", None), "browserWidget", None)
    if browser is None:
        return []
    visual = getattr(browser, "dicomVisualBrowser", None)
    try:
        if getattr(browser, "useVisualDICOMBrowser", False) and hasattr(visual, "patientView"):
            uids = visual.patientView().selectedSeriesInstanceUIDs()
        else:
            uids = browser.dicomBrowser.dicomTableManager().currentSeriesSelection()
    except AttributeError as error:  # a Slicer whose browser offers neither: say so, select nothing
        logging.warning("MedDL: cannot read the DICOM browser's selection: %s", error)
        return []
    return [uid.replace("'", "") for uid in uids if uid]


class CohortPanel:
    """Drives the cohort widgets of the module's .ui (the `cohort...` names below).

    `widget` is the module widget: its `ui`, `logic.startCohort`, `runner` (progress bar and Cancel),
    `isRunning()` and `sharedSettings()` (the Inputs section's model, device and Fast; None when declined).
    """

    def __init__(self, widget) -> None:
        self.widget, self.ui = widget, widget.ui
        self.seriesUIDs: list[str] = []
        ui = self.ui
        for combo, choices in ((ui.cohortSourceComboBox, SOURCES), (ui.cohortFormatComboBox, OUTPUT_FORMATS)):
            combo.clear()
            for label, _value in choices:
                combo.addItem(label)
        ui.cohortFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        ui.cohortOutputPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        ui.cohortSourceComboBox.connect("currentIndexChanged(int)", lambda _index: self.onSourceChanged())
        ui.cohortFormatComboBox.connect("currentIndexChanged(int)", lambda _index: self.updateButtons())
        ui.cohortVolumesSelector.connect("checkedNodesChanged()", self.updateButtons)
        ui.cohortFolderPathLineEdit.connect("currentPathChanged(QString)", lambda _path: self.updateButtons())
        ui.cohortOutputPathLineEdit.connect("currentPathChanged(QString)", lambda _path: self.updateButtons())
        ui.cohortDicomRefreshButton.connect("clicked(bool)", lambda _checked: self.refreshDicomSelection())
        ui.cohortRunButton.connect("clicked(bool)", lambda _checked: self.onRun())
        self.onSourceChanged()

    def source(self) -> str:
        return SOURCES[max(self.ui.cohortSourceComboBox.currentIndex, 0)][1]

    def outputFormat(self) -> str:
        return OUTPUT_FORMATS[max(self.ui.cohortFormatComboBox.currentIndex, 0)][1]

    def onSourceChanged(self) -> None:
        ui, source = self.ui, self.source()
        for shown, widgets in (("volumes", (ui.cohortVolumesLabel, ui.cohortVolumesSelector)),
                               ("folder", (ui.cohortFolderLabel, ui.cohortFolderPathLineEdit)),
                               ("dicom", (ui.cohortDicomLabel, ui.cohortDicomWidget))):
            for child in widgets:
                child.visible = source == shown
        if source == "dicom":
            self.refreshDicomSelection()
        self.updateButtons()

    def refreshDicomSelection(self) -> None:
        """Read the DICOM browser's selection again (on entering the module, choosing the source, or Refresh)."""
        self.seriesUIDs = selected_dicom_series_uids()
        count = len(self.seriesUIDs)
        self.ui.cohortDicomSeriesLabel.text = (
            _("{count} series selected in the DICOM browser").format(count=count) if count
            else _("No series selected: select them in the DICOM module, then Refresh"))
        self.updateButtons()

    def _hasCases(self) -> bool:
        ui, source = self.ui, self.source()
        if source == "volumes":
            return bool(ui.cohortVolumesSelector.checkedNodes())
        return bool(ui.cohortFolderPathLineEdit.currentPath) if source == "folder" else bool(self.seriesUIDs)

    def updateButtons(self) -> None:
        problem = cohort_problem(self.source(), self._hasCases(), self.ui.cohortOutputPathLineEdit.currentPath,
                                 self.outputFormat())
        self.ui.cohortRunButton.enabled = not problem and not self.widget.isRunning()
        self.ui.cohortRunButton.toolTip = problem or _("Segment every case into the output folder, in the background")

    def onRun(self) -> None:
        settings = self.widget.sharedSettings()
        if settings is None:
            return
        ui, source = self.ui, self.source()
        try:
            job = self.widget.logic.startCohort(
                ui.cohortOutputPathLineEdit.currentPath,
                volumes=list(ui.cohortVolumesSelector.checkedNodes()) if source == "volumes" else (),
                folder=ui.cohortFolderPathLineEdit.currentPath if source == "folder" else None,
                dicomSeriesUIDs=self.seriesUIDs if source == "dicom" else (),
                loadResults=ui.cohortLoadResultsCheckBox.checked, outputFormat=self.outputFormat(),
                resume=ui.cohortResumeCheckBox.checked, **settings)
        except Exception as error:
            slicer.util.errorDisplay(_("Cannot start the cohort: {error}").format(error=error))
            return
        ui.cohortStatusTableView.setMRMLTableNode(job.status_table)  # rows appear as the cases end
        self.widget.runner.start(job, _("Segmenting the cohort..."), self._done)

    def _done(self, result) -> None:
        self.ui.statusLabel.text = _("{done} done, {failed} failed — summary: {path}").format(
            done=result.done, failed=result.failed, path=result.summary_csv)

    def runAndWait(self, timeout: float = 600.0) -> str:
        """Press Run cohort and let the panel's timer poll the job until it ends (self-tests, scripts); returns the
        status line. Raises when Run is disabled or no job starts; cancels and raises past `timeout`."""
        if not self.ui.cohortRunButton.enabled:
            raise RuntimeError(f"Run cohort is disabled: {self.ui.cohortRunButton.toolTip}")
        self.ui.cohortRunButton.click()
        if not self.widget.isRunning():
            raise RuntimeError(f"Run cohort started no job: {self.ui.statusLabel.text}")
        deadline = time.monotonic() + timeout
        while self.widget.isRunning() and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        if self.widget.isRunning():
            self.widget.runner.cancel()
            raise TimeoutError(f"no result within {timeout:.0f} s")
        return self.ui.statusLabel.text
