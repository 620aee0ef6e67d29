"""Runs one MedDL background job at a time behind a progress bar, a status line and a Cancel button."""

from __future__ import annotations

from typing import Callable, Optional

import qt
import slicer
from MedDLLib.jobs import JobFailed, JobState

POLL_INTERVAL_MS = 200


class JobRunner:
    """Polls the job with a QTimer on the main thread, so Slicer never freezes.

    `on_done(job)` runs after the job ends well (for jobs with `finish()`, it calls it, which raises
    the worker's message on failure); errors are shown to the user and nothing else happens.
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

    def start(self, job, title: str, on_done: Callable) -> bool:
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
        engine = getattr(job, "engine", job)
        job.poll()
        self.progress_bar.value = int(100 * engine.fraction)
        self.status_label.text = engine.message
        if engine.state is JobState.RUNNING:
            return
        self.timer.stop()
        self.job = None
        try:
            if engine.state is JobState.FAILED and not hasattr(job, "finish"):
                raise JobFailed(engine.error)
            self._on_done(job)
        except Exception as error:
            self.status_label.text = "Failed; nothing was changed."
            slicer.util.errorDisplay(f"MedDL: {error}")
        self._show(False)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status_label.text = getattr(self.job, "cancelled_message", "Cancelled; nothing was changed.")
            self.job = None
            self.timer.stop()
            self._show(False)

    def _show(self, running: bool) -> None:
        self.cancel_button.enabled = running
        self.progress_bar.visible = running
        self.on_running_changed(running)
