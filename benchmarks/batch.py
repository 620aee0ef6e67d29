"""Cohort throughput: `meddl segment --batch` against one `meddl segment` per case, Ray with two workers against one,
and Slicer's cohort job (MedDLLib.CohortJob on slicer-core) against the command-line batch, all in the same run.

Cases: the real MNI152 2009a T1 (nilearn) made into distinct cases, each rotated (up to 12 degrees about a random
axis), cropped (random margins) and resampled (1.0-1.6 mm), with its own intensity scale. Model: the default
brain extraction (deepbet), on the CPU. Every path's label maps are compared with the one-per-case run's.

Targets: batch >= 1.3x the throughput of one `meddl segment` per case; Ray with two one-core workers >= 1.6x one
one-core worker; the Slicer path <= 1.1x the command-line batch's time.

--quick: 4 cases, to check the script (results to a temporary file, README untouched).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "MedDLExtension"), str(Path(__file__).resolve().parent)]
import harness  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "batch.json"
CASES, QUICK_CASES = 20, 4
MEDDL = [sys.executable, "-m", "meddl"]


def make_cases(folder: Path, count: int) -> list[Path]:
    """`count` distinct real-data cases from the MNI T1: rotated, cropped, resampled, rescaled."""
    from meddl.sample_data import mni152_paths

    t1 = sitk.ReadImage(str(mni152_paths()["t1"]), sitk.sitkFloat32)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        axis = rng.normal(size=3)
        rotation = sitk.VersorRigid3DTransform()
        rotation.SetCenter(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
        rotation.SetRotation(tuple(axis / np.linalg.norm(axis)), float(np.deg2rad(rng.uniform(-12, 12))))
        spacing = tuple(float(rng.uniform(1.0, 1.6)) for _ in range(3))
        low = rng.integers(0, 12, 3)
        high = rng.integers(0, 12, 3)
        size = [int((n - a - b) * s0 / s) for n, a, b, s0, s in zip(t1.GetSize(), low, high, t1.GetSpacing(),
                                                                     spacing)]
        origin = t1.TransformIndexToPhysicalPoint([int(v) for v in low])
        case = sitk.Resample(t1, size, rotation, sitk.sitkLinear, origin, spacing, t1.GetDirection(), 0.0)
        case = sitk.Cast(case * float(rng.uniform(0.5, 3.0)), sitk.sitkFloat32)
        paths.append(folder / f"mni_case{index:02d}.nii.gz")
        sitk.WriteImage(case, str(paths[-1]))
    return paths


def timed(command: list[str], environment: dict | None = None) -> float:
    start = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=environment)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{process.stderr[-3000:]}")
    return time.perf_counter() - start


def one_per_case(cases: list[Path], out: Path) -> float:
    out.mkdir()
    return sum(timed([*MEDDL, "segment", str(case), str(out / case.name), "--device", "cpu", "--progress", "none"])
               for case in cases)


def batch(folder: Path, out: Path, *more: str) -> float:
    return timed([*MEDDL, "segment", "--batch", str(folder), "--out", str(out), "--device", "cpu",
                  "--progress", "none", *more])


def slicer_path(folder: Path, out: Path) -> float:
    """The Segmentation module's cohort job on slicer-core, timed from Run to the finished summary."""
    script = (
        "import sys, time\n"
        f"sys.path[:0] = {[str(harness.ROOT / 'MedDLExtension'), str(harness.ROOT / 'Testing' / 'Python')]!r}\n"
        "from headless_slicer import HeadlessScene\n"
        "from MedDLLib.cohort_job import CohortJob\n"
        "scene = HeadlessScene().scene\n"
        "start = time.perf_counter()\n"
        f"job = CohortJob(scene, {str(out)!r}, None, 'cpu', folder={str(folder)!r})\n"
        "job.wait()\n"
        "result = job.finish()\n"
        "print(time.perf_counter() - start, result.done)\n")
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"the Slicer path failed:\n{process.stderr[-3000:]}")
    seconds, done = process.stdout.split()[-2:]
    if int(done) != len(list(folder.glob("*.nii.gz"))):
        raise RuntimeError(f"the Slicer path finished {done} cases:\n{process.stderr[-3000:]}")
    return float(seconds)


def same_labels(reference: Path, other: Path, cases: list[Path]) -> bool:
    for case in cases:
        stem = case.name[: -len(".nii.gz")]
        left = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / case.name)))
        right = sitk.GetArrayFromImage(sitk.ReadImage(str(other / f"{stem}.nii.gz")))
        if not np.array_equal(left, right):
            return False
    return True


def run_all(work: Path, count: int) -> dict:
    folder = work / "cases"
    folder.mkdir()
    cases = make_cases(folder, count)
    seconds = {
        "one_per_case": one_per_case(cases, work / "single"),
        "batch": batch(folder, work / "batch"),
        "ray_1_worker": batch(folder, work / "ray1", "--ray", "auto", "--ray-workers", "1"),
        "ray_2_workers": batch(folder, work / "ray2", "--ray", "auto", "--ray-workers", "2"),
        "slicer": slicer_path(folder, work / "slicer"),
    }
    identical = {name: same_labels(work / "single", work / out, cases) for name, out in (
        ("batch", "batch"), ("ray_1_worker", "ray1"), ("ray_2_workers", "ray2"), ("slicer", "slicer"))}
    ratios = {"batch_throughput_vs_one_per_case": seconds["one_per_case"] / seconds["batch"],
              "ray_2_vs_1_workers": seconds["ray_1_worker"] / seconds["ray_2_workers"],
              "slicer_vs_batch_time": seconds["slicer"] / seconds["batch"]}
    targets = {"batch_throughput_vs_one_per_case": ratios["batch_throughput_vs_one_per_case"] >= 1.3,
               "ray_2_vs_1_workers": ratios["ray_2_vs_1_workers"] >= 1.6,
               "slicer_vs_batch_time": ratios["slicer_vs_batch_time"] <= 1.1}
    return {"machine": {"cpu_count": os.cpu_count()}, "cases": count, "seconds": seconds, "ratios": ratios,
            "targets_met": targets, "labels_identical_to_one_per_case": identical,
            "model": "deepbet-brain-extraction (the default), CPU"}


def markdown_table(report: dict) -> str:
    seconds, ratios, met = report["seconds"], report["ratios"], report["targets_met"]
    count = report["cases"]
    rows = [
        f"| path | wall time for {count} cases | per case | compared with | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
        f"| one `meddl segment` per case | {seconds['one_per_case']:.1f} s | {seconds['one_per_case'] / count:.2f} s"
        " | | | | |",
        f"| `meddl segment --batch` | {seconds['batch']:.1f} s | {seconds['batch'] / count:.2f} s | one per case "
        f"(throughput) | {ratios['batch_throughput_vs_one_per_case']:.2f}x | >= 1.3x | "
        f"{_yes(met['batch_throughput_vs_one_per_case'])} |",
        f"| `--ray auto --ray-workers 1` (1 core) | {seconds['ray_1_worker']:.1f} s | "
        f"{seconds['ray_1_worker'] / count:.2f} s | | | | |",
        f"| `--ray auto --ray-workers 2` (1 core each) | {seconds['ray_2_workers']:.1f} s | "
        f"{seconds['ray_2_workers'] / count:.2f} s | Ray, 1 worker (throughput) | {ratios['ray_2_vs_1_workers']:.2f}x"
        f" | >= 1.6x | {_yes(met['ray_2_vs_1_workers'])} |",
        f"| Slicer cohort job (slicer-core) | {seconds['slicer']:.1f} s | {seconds['slicer'] / count:.2f} s | "
        f"`--batch` (time) | {ratios['slicer_vs_batch_time']:.2f}x | <= 1.1x | {_yes(met['slicer_vs_batch_time'])} |",
    ]
    identical = all(report["labels_identical_to_one_per_case"].values())
    rows.append(f"\nLabel maps identical to the one-per-case run on every path: {_yes(identical)}.")
    return "\n".join(rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CASES} cases; results to a temporary file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meddl-bench-batch-") as work:
        report = run_all(Path(work), QUICK_CASES if args.quick else CASES)
    harness.publish("batch", report, markdown_table(report), RESULTS, args.quick)
    return 0 if all(report["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
