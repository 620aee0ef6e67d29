"""Runs the self-test of every MedDL module inside the Slicer application; exits 1 if one fails or did not load.

Slicer registers each scripted module's test as `slicer.selfTests[moduleName]` (what Developer mode's
"Reload and Test" runs). From the repository root, with MedDL's Python dependencies in Slicer's Python
(.github/workflows/slicer-selftests.yml installs them):

    m=$PWD/MedDLExtension
    PYTHONPATH=$m Slicer --no-splash --testing --additional-module-paths $m/MedDLSegmentation \
        $m/MedDLClassification $m/MedDLEnhancement $m/MedDLRegistration \
        --python-script .github/slicer_selftests.py [MODULE ...]

`--testing` makes Slicer answer its confirmation pop-ups itself and only log its error pop-ups.
"""

from __future__ import annotations

import sys
import time
import traceback

import slicer
from meddl.tasks import TASKS

MODULES = tuple(task.module for task in TASKS.values())  # one Slicer module per registered task


def run(modules) -> list[str]:
    """Each module's self-test in turn; the names of those that failed."""
    failed = []
    tests = getattr(slicer, "selfTests", {})
    for name in modules:
        start = time.monotonic()
        try:
            if name not in tests:
                raise RuntimeError(f"{name} did not load: it has no self-test in slicer.selfTests")
            tests[name](msec=0)  # no message pop-ups: they would only slow the run down
            outcome = "passed"
        except Exception:
            traceback.print_exc()
            failed.append(name)
            outcome = "FAILED"
        print(f"{name}: {outcome} in {time.monotonic() - start:.0f} s", flush=True)
    return failed


selected = sys.argv[1:] or MODULES
failures = run(selected)
print(f"{len(selected) - len(failures)} passed, {len(failures)} failed", flush=True)
slicer.util.exit(1 if failures else 0)  # also keeps --testing from replacing the exit code
