"""The Compute panel: where MedDL's jobs run, this computer or a MedDL server (the model library panel lists the
models of that place). Every module shows the same setting: MedDLLib.compute holds it, Slicer's
settings keep it (SETTINGS_URL, SETTINGS_KEY), and each panel reads it again when its module is entered."""

from __future__ import annotations

from typing import Callable

import ctk
import qt
import slicer
from meddl.errors import MeddlError
from MedDLLib.compute import (
    check_connection,
    check_server_url,
    current_compute,
    forget_server_models,
    load_compute,
    save_compute,
)
from slicer.i18n import tr as _

SERVER_PLACEHOLDER = "https://gpu-box:8765"
STORED_KEY_PLACEHOLDER = "stored"


def load_saved_compute() -> None:
    """The saved setting into MedDLLib.compute, once, when Slicer has started: the modules, the Segment Editor
    effect and the Python console all follow it."""
    load_compute(slicer.app.settings())


def describe_compute(compute) -> str:
    return (_("Jobs run on the MedDL server at {url}.").format(url=compute.server_url) if compute.server_url
            else _("Jobs run on this computer."))


class ComputePanel:
    """A collapsible "Compute" section built in code (the same in every module): This computer / MedDL server,
    the server's address and API key (password echo; a saved key is never shown, only "stored"), Test connection
    and Save. `on_changed()` is called after Save and after a test (the model list may have changed)."""

    def __init__(self, on_changed: Callable[[], None] = lambda: None) -> None:
        self.on_changed = on_changed
        self.collapsibleButton = ctk.ctkCollapsibleButton()
        self.collapsibleButton.objectName = "computeCollapsibleButton"
        self.collapsibleButton.text = _("Compute")
        self.collapsibleButton.collapsed = True
        form = qt.QFormLayout(self.collapsibleButton)

        choice = qt.QWidget()
        choiceLayout = qt.QHBoxLayout(choice)
        choiceLayout.setContentsMargins(0, 0, 0, 0)
        self.thisComputerRadioButton = qt.QRadioButton(_("This computer"))
        self.thisComputerRadioButton.objectName = "computeThisComputerRadioButton"
        self.thisComputerRadioButton.toolTip = _("Jobs run in a background process on this computer")
        self.serverRadioButton = qt.QRadioButton(_("MedDL server"))
        self.serverRadioButton.objectName = "computeServerRadioButton"
        self.serverRadioButton.toolTip = _("Jobs run on a MedDL server (meddl serve): inputs are uploaded, results "
                                           "fetched back")
        self.buttonGroup = qt.QButtonGroup(choice)
        for button in (self.thisComputerRadioButton, self.serverRadioButton):
            self.buttonGroup.addButton(button)
            choiceLayout.addWidget(button)
        choiceLayout.addStretch(1)
        form.addRow(_("Run jobs on:"), choice)

        self.urlLineEdit = qt.QLineEdit()
        self.urlLineEdit.objectName = "computeUrlLineEdit"
        self.urlLineEdit.placeholderText = SERVER_PLACEHOLDER
        self.urlLineEdit.toolTip = _("The MedDL server's address (https, or http on this computer)")
        form.addRow(_("Server address:"), self.urlLineEdit)

        self.keyLineEdit = qt.QLineEdit()
        self.keyLineEdit.objectName = "computeKeyLineEdit"
        self.keyLineEdit.echoMode = qt.QLineEdit.Password
        self.keyLineEdit.toolTip = _("The API key the server's administrator gave you; kept in Slicer's settings "
                                     "and sent only to this server. Leave empty to keep the stored key.")
        form.addRow(_("API key:"), self.keyLineEdit)

        buttons = qt.QWidget()
        buttonsLayout = qt.QHBoxLayout(buttons)
        buttonsLayout.setContentsMargins(0, 0, 0, 0)
        self.testButton = qt.QPushButton(_("Test connection"))
        self.testButton.objectName = "computeTestButton"
        self.testButton.toolTip = _("Ask the server for its models with this address and key")
        self.saveButton = qt.QPushButton(_("Save"))
        self.saveButton.objectName = "computeSaveButton"
        self.saveButton.toolTip = _("Use this setting for every MedDL job (all modules and the Segment Editor "
                                    "effect) and keep it in Slicer's settings")
        buttonsLayout.addWidget(self.testButton)
        buttonsLayout.addWidget(self.saveButton)
        form.addRow(buttons)

        self.statusLabel = qt.QLabel()
        self.statusLabel.objectName = "computeStatusLabel"
        self.statusLabel.wordWrap = True
        self.statusLabel.textInteractionFlags = qt.Qt.TextSelectableByMouse
        form.addRow(self.statusLabel)

        self.serverRadioButton.toggled.connect(lambda _checked: self._updateEnabled())
        self.urlLineEdit.textChanged.connect(lambda _text: self._updateKeyPlaceholder())
        self.testButton.clicked.connect(self.onTest)
        self.saveButton.clicked.connect(self.onSave)
        self.refresh()

    def placeAbove(self, widget) -> None:
        """Put the section in `widget`'s parent layout, just above the row that holds `widget` (the Apply
        button), or last when it is not found there."""
        layout = widget.parentWidget().layout()
        for index in range(layout.count()):
            item = layout.itemAt(index)
            inner = item.layout()
            if item.widget() == widget or (inner is not None and inner.indexOf(widget) >= 0):
                layout.insertWidget(index, self.collapsibleButton)
                return
        layout.addWidget(self.collapsibleButton)

    def refresh(self) -> None:
        """Show the current setting (another module may have changed it); an unsaved edit is dropped."""
        compute = current_compute()
        (self.serverRadioButton if compute.server_url else self.thisComputerRadioButton).checked = True
        if compute.server_url:
            self.urlLineEdit.text = compute.server_url
        self.keyLineEdit.text = ""
        self._updateKeyPlaceholder()
        self._updateEnabled()
        self.statusLabel.text = describe_compute(compute)

    def _updateEnabled(self) -> None:
        server = bool(self.serverRadioButton.checked)
        for widget in (self.urlLineEdit, self.keyLineEdit, self.testButton):
            widget.enabled = server

    def _updateKeyPlaceholder(self) -> None:
        """The key field says "stored" while the address is the saved server's, whose key is kept (never shown)."""
        compute = current_compute()
        try:
            url = check_server_url(self.urlLineEdit.text)[0]
        except ValueError:
            url = ""
        stored = bool(compute.api_key) and url == compute.server_url
        self.keyLineEdit.placeholderText = STORED_KEY_PLACEHOLDER if stored else _("API key")

    def onTest(self) -> None:
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            message = check_connection(self.urlLineEdit.text, self.keyLineEdit.text)
        except (ValueError, MeddlError) as error:
            message = str(error)
        finally:
            slicer.app.restoreOverrideCursor()
        self.statusLabel.text = message
        self.on_changed()

    def onSave(self) -> None:
        settings = slicer.app.settings()
        url = self.urlLineEdit.text if self.serverRadioButton.checked else ""
        try:
            warnings = save_compute(settings, url, self.keyLineEdit.text)
        except ValueError as error:
            self.statusLabel.text = str(error)
            return
        settings.sync()
        forget_server_models()  # the list is asked for again
        self.refresh()
        self.statusLabel.text = " ".join([_("Saved.") + " " + describe_compute(current_compute()), *warnings])
        self.on_changed()
