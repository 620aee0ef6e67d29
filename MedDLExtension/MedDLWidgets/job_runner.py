"""Runs one MedDL background job at a time behind a progress bar, a status line and a Cancel button."""

from __future__ import annotations

from typing import Any, Callable, Optional

import qt
import slicer
from MedDLLib.jobs import Job, JobState

POLL_INTERVAL_MS = 200


class JobRunner:
    """Polls the job with a QTimer on the main thread, so Slicer never freezes.

    When the job ends, the runner calls `job.finish()` (which applies a scene-facing job, or raises
    with the worker's message) and hands its product to `on_done`; errors are shown to the user and
    nothing else happens.
    """

    def __init__(self, progress_bar, status_label, cancel_button,
                 on_running_changed: Callable[[bool], None] = lambda running: None) -> None:
        self.progress_bar, self.status_label, self.cancel_button = progress_bar, status_label, cancel_button
        self.on_running_changed = on_running_changed
        self.job = None
        self._on_done: Optional[Callable] = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.poll)
        cancel_button.clicked.connect(self.cancel)
        self._show(False)

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, job: Job, title: str, on_done: Callable[[Any], None]) -> bool:
        """Run `job`; refuses (and cancels it) if another job is running."""
        if self.running:
            job.cancel()
            slicer.util.errorDisplay("Another MedDL job is running; wait for it or cancel it.")
            return False
        self.job, self._on_done = job, on_done
        self.progress_bar.value = 0
        self.status_label.text = title
        self._show(True)
        self.timer.start()
        return True

    def poll(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        job.poll()
        self.progress_bar.value = int(100 * job.fraction)
        self.status_label.text = job.message
        if job.state is JobState.RUNNING:
            return
        self.timer.stop()
        self.job = None
        try:
            self._on_done(job.finish())
        except Exception as error:
            self.status_label.text = "Failed; nothing was changed."
            slicer.util.errorDisplay(f"MedDL: {error}")
        self._show(False)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status_label.text = self.job.cancelled_message
            self.job = None
            self.timer.stop()
            self._show(False)

    def _show(self, running: bool) -> None:
        self.cancel_button.enabled = running
        self.progress_bar.visible = running
        self.on_running_changed(running)
