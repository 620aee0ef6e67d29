"""Shared benchmark plumbing: run each case in a fresh subprocess, time it, measure its peak memory."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def rss_now_kib() -> int:
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """This process's own peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux a child inherits the
    parent's resident size at fork into ru_maxrss, so a benchmark started by a big parent would report the
    parent's size as its own peak."""
    return _status_kib("VmHWM")


def time_call(case: str, call: Callable[[], object], repeats: int) -> dict:
    """Inside the subprocess: one warm-up, then the median of `repeats` runs and the peak RSS growth."""
    call()
    baseline = rss_now_kib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = peak_rss_kib()
    return {"case": case, "seconds": statistics.median(times), "all_seconds": times,
            "peak_rss_growth_mib": max(peak - baseline, 0) / 1024, "peak_rss_mib": peak / 1024}


def timed_once(call: Callable[[], object]) -> tuple[object, float, float]:
    """Inside the subprocess: (result, seconds, peak RSS growth in MiB) of one call, no warm-up."""
    baseline = rss_now_kib()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    peak = peak_rss_kib()
    return result, seconds, max(peak - baseline, 0) / 1024


def run_script(script: str, *arguments: str) -> dict:
    """Run `script ARGUMENTS` in a new interpreter and return the JSON it prints last."""
    process = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, check=False)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark {Path(script).name} {' '.join(arguments)} failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def measure(script: str, case: str, repeats: int) -> dict:
    """Run `script --case CASE --repeats N` in a new interpreter and return the JSON it prints last."""
    return run_script(script, "--case", case, "--repeats", str(repeats))


def update_readme(name: str, table: str) -> None:
    """Replace the README's table between <!-- benchmark:NAME:start --> and its end marker."""
    readme = ROOT / "README.md"
    start, end = f"<!-- benchmark:{name}:start -->", f"<!-- benchmark:{name}:end -->"
    text = readme.read_text()
    if start in text and end in text:
        before, rest = text.split(start, 1)
        readme.write_text(before + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])


def publish(name: str, report: dict, table: str, results: Path, quick: bool) -> None:
    """Write the JSON report to `results` (a --quick run's beside the temporary files), put the table into the
    README unless it was a --quick check, and print both."""
    path = Path(tempfile.gettempdir()) / f"meddl-bench-{name}-quick.json" if quick else results
    path.write_text(json.dumps(report, indent=1))
    if not quick:
        update_readme(name, table)
    print(table)
    print(f"\nresults: {path}")
