"""The model library panel: search, filter, install, import and remove models from any MedDL module."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import qt
import slicer
from meddl.errors import MeddlError
from meddl.library.overview import filter_rows
from meddl.models import catalog
from meddl.models.formats import TRUST_MEANS, nnunet_results_folder
from MedDLLib.compute import current_compute, model_rows_for
from MedDLLib.dependencies import ensure_dependencies
from MedDLLib.jobs import EngineJob
from MedDLLib.model_library import CARD_FORM, remove_model, start_import, start_install

COLUMNS = ("Model", "Modality", "Licence", "Size", "Accuracy", "CPU time", "GPU time", "Status")
ID_ROLE = qt.Qt.UserRole


def _size(size) -> str:
    return "" if size is None else f"{size / 1e6:.0f} MB"


def is_nnunet_source(path: Path) -> bool:
    """An nnU-Net v2 results folder, or a zip holding one (as nnUNetv2_export_model_to_zip makes): it needs
    nnunetv2, installed on first use."""
    if path.is_dir():
        return nnunet_results_folder(path) is not None
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("plans.json") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _columns(row, local: bool) -> tuple[str, ...]:
    """The table's cells for one model row (the status says where the model is)."""
    cpu = "not measured" if row.cpu_seconds is None else f"{row.cpu_seconds:.1f} s"
    gpu = "not measured" if row.gpu_seconds is None else f"{row.gpu_seconds:.1f} s"
    if local:
        status = "broken" if row.broken else "installed" if row.installed else "available"
    else:
        status = "broken" if row.broken else "on the server" if row.installed else "not on the server"
    return (row.title or row.id, row.modality, row.license, _size(row.size_bytes), row.accuracy, cpu, gpu, status)


class ModelLibraryPanel:
    """Drives the library widgets of a module's .ui (see the names below) for one task.

    `on_select(model_id)` is called when the user picks a model; `run_job(job, title, on_success)`
    runs an engine job with the module's progress bar and Cancel button.
    """

    rows: list = []  # every model of the task at the place the last refresh listed (for the selection)
    shownCompute = None  # the Compute setting of the last refresh: entering a module refreshes when it changed

    def __init__(self, ui, task: str, on_select: Callable[[str], None],
                 run_job: Callable[[EngineJob, str, Callable[[], None]], None]) -> None:
        self.ui, self.task, self.on_select, self.run_job = ui, task, on_select, run_job
        table = ui.modelTable
        table.setColumnCount(len(COLUMNS))
        table.setHorizontalHeaderLabels(list(COLUMNS))
        table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        table.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        table.itemSelectionChanged.connect(self._onSelectionChanged)
        ui.modelSearchLineEdit.textChanged.connect(lambda _text: self.refresh())
        ui.installedOnlyCheckBox.toggled.connect(lambda _checked: self.refresh())
        ui.installModelButton.clicked.connect(self.onInstall)
        ui.importModelFileButton.clicked.connect(lambda: self.onImport(folder=False))
        ui.importModelFolderButton.clicked.connect(lambda: self.onImport(folder=True))
        ui.removeModelButton.clicked.connect(self.onRemove)

    def refresh(self, select: str = "") -> None:
        """Fill the table with the models of the Compute setting's place (the local catalog and model folder, or
        the server's library), keeping or setting the selection. A server's list is read-only, and empty (the
        error in the status line) when the server cannot be reached: no local models, which it would not have."""
        compute = self.shownCompute = current_compute()
        local = not compute.server_url
        for button in (self.ui.importModelFileButton, self.ui.importModelFolderButton):
            button.enabled = local
            button.toolTip = "" if local else "A MedDL server's administrator manages its models"
        select = select or self.selectedId()
        try:
            self.rows = model_rows_for(self.task, compute=compute)  # listed once; the filters apply to this list
            rows = filter_rows(self.rows, self.ui.modelSearchLineEdit.text,
                               installed=True if self.ui.installedOnlyCheckBox.checked else None)
        except (MeddlError, ValueError) as error:
            rows, self.rows = [], []
            self.ui.statusLabel.text = f"The server's models cannot be listed: {error}"
        where = "" if local else f" (on {compute.server_url})"
        table = self.ui.modelTable
        table.blockSignals(True)
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            for column, value in enumerate(_columns(row, local)):
                item = qt.QTableWidgetItem(value)
                item.setData(ID_ROLE, row.id)
                item.setToolTip(f"{row.id}{where}\n{row.broken or row.description}")
                table.setItem(index, column, item)
            if row.id == select:
                table.selectRow(index)
        table.blockSignals(False)
        table.resizeColumnsToContents()
        self._updateButtons(self._selectedRow())

    def selectedId(self) -> str:
        items = self.ui.modelTable.selectedItems()
        return items[0].data(ID_ROLE) if items else ""

    def _selectedRow(self):
        model_id = self.selectedId()
        return next((row for row in self.rows if row.id == model_id), None)

    def _onSelectionChanged(self) -> None:
        row = self._selectedRow()
        if row is not None and row.installed:
            self.on_select(row.id)
        self._updateButtons(row)

    def _updateButtons(self, row) -> None:
        """Install for an available model, Remove for a removable installed or broken one (`row`: the
        selection; a broken entry, whose record or card is damaged, can only be removed). A server's models are
        managed by its administrator."""
        if self.shownCompute is not None and self.shownCompute.server_url:
            self.ui.installModelButton.enabled = self.ui.removeModelButton.enabled = False
            return
        self.ui.installModelButton.enabled = bool(row and not row.installed and not row.broken)
        removable = bool(row and (row.installed or row.broken)) and (
            row.origin != "catalog" or "python_package" not in catalog.get_entry(row.id)["source"])
        self.ui.removeModelButton.enabled = removable

    def onInstall(self) -> None:
        model_id = self.selectedId()
        source = catalog.get_entry(model_id)["source"] if catalog.has_entry(model_id) else {}
        trust = False
        if "monai_zoo" in source:
            notes = catalog.get_entry(model_id).get("notes", "")
            trust = slicer.util.confirmYesNoDisplay(
                f"{model_id} is a MONAI Model Zoo bundle: it runs through MONAI's own bundle workflow, and its "
                f"configuration holds Python expressions.\n\n{TRUST_MEANS}\n\nMedDL checks that the download is "
                "the one the Zoo published (its checksum), not what its code does."
                + (f"\n\n{notes}" if notes else "") + "\n\nInstall it and trust it?")
            if not trust:
                return
        self.run_job(start_install(model_id, trust), f"Installing {model_id}", lambda: self.refresh(model_id))

    def onImport(self, folder: bool) -> None:
        if folder:
            path = qt.QFileDialog.getExistingDirectory(None, "Import a MONAI bundle or nnU-Net v2 results folder")
        else:
            path = qt.QFileDialog.getOpenFileName(None, "Import a model", "",
                                                  "Models (*.zip *.ts *.pt *.pth);;All files (*)")
        if not path:
            return
        if is_nnunet_source(Path(path)) and not ensure_dependencies(
                lambda message: slicer.util.confirmOkCancelDisplay(message), nnunet=True):
            return
        form = self._askCardFields(path)
        if form is None:
            return
        model_id = form.pop("id") or None
        trust = form.pop("trust")
        self.run_job(start_import(path, model_id, form, trust), f"Importing {path}",
                     lambda: self.refresh(model_id or ""))

    def _askCardFields(self, path: str):
        """The short form for card fields the model may lack; blank fields keep the card's values."""
        dialog = qt.QDialog(slicer.util.mainWindow())
        dialog.setWindowTitle("Import model")
        layout = qt.QFormLayout(dialog)
        layout.addRow(qt.QLabel(f"Fill in what the model's card lacks:\n{path}"))
        edits = {"id": qt.QLineEdit()}
        layout.addRow("Library id", edits["id"])
        for field, label, default in CARD_FORM:
            edits[field] = qt.QLineEdit(self.task if field == "task" else default)  # this module's task
            layout.addRow(label, edits[field])
        trust = qt.QCheckBox("I trust this model's source (allows pickled code and bundle expressions)")
        layout.addRow(trust)
        buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttons.accepted.connect(dialog.accept)
        buttons.rejected.connect(dialog.reject)
        layout.addRow(buttons)
        if not dialog.exec_():
            return None
        return {**{field: edit.text.strip() for field, edit in edits.items()}, "trust": trust.checked}

    def onRemove(self) -> None:
        row = self._selectedRow()
        if row is None or not slicer.util.confirmOkCancelDisplay(
                f"Remove {row.title}? This deletes {_size(row.size_bytes)} from the model folder."):
            return
        try:
            freed = remove_model(row.id)
        except Exception as error:
            slicer.util.errorDisplay(f"Cannot remove {row.id}: {error}")
            return
        self.ui.statusLabel.text = f"Removed {row.id}: {_size(freed)} freed."
        self.refresh()
