"""nnU-Net benchmark: MedDL running an nnU-Net v2 results folder against nnU-Net's own predictor, same run.

The MNI152 T1 at its native 1 mm (197x233x189) segmented on the CPU with the "3d" test results folder
(Testing/Python/nnunet_folders.py: nnU-Net's own planning, preprocessing and nnUNetTrainer; 3 mm plans,
labels grey and white matter); nnU-Net resamples to its plans' spacing and back itself.
(1) nnU-Net's nnUNetPredictor (initialize_from_trained_model_folder, then predict_single_npy_array on the
    array SimpleITKIO reads; tile step 0.5, Gaussian, perform_everything_on_device False) vs meddl's
    `segment` in process, mirroring off and on: time, peak memory and the Dice per label between the two
    label maps.
(2) The Slicer path (volume node -> SegmentationJob on the background worker -> segmentation node) vs
    meddl in process, mirroring off and on.

Model loading and image reading are excluded on every side: nnU-Net initialises its predictor once, MedDL
loads the folder once (load_model), the Slicer path's worker keeps the model it loaded in the warm-up. Each
case runs in a fresh subprocess (one warm-up, then the median of --repeats runs). Every process uses the same
number of threads (--threads, default all cores): OMP_NUM_THREADS and nnUNet_def_n_proc are set for the cases
and the worker they start, and torch.set_num_threads in each case. Left alone, nnUNetPredictor runs the sliding
window on min(nnUNet_def_n_proc, torch's threads) and both sides resample the logits back with
nnUNet_def_n_proc threads (default 8, whatever the cores). Peak memory is the process's peak RSS (ru_maxrss);
for the Slicer path, the worker's (VmHWM), which does the inference.
--quick: a 96^3 crop and 1 repeat, to check the script (results in a temporary file, README untouched).
Writes benchmarks/results/nnunet.json and the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import harness
from harness import time_call

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python")]
RESULTS = ROOT / "benchmarks" / "results" / "nnunet.json"
KIND = "3d"  # nnunet_folders kind: 3d_fullres, one fold, 3 mm
TILE_STEP, JOB_TIMEOUT_S, QUICK_CROP = 0.5, 3600, 96
DICE_TARGET = 0.99
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "nnUNet_def_n_proc")


def _folds(folder: str) -> tuple[int, ...]:
    """Every fold with a final checkpoint: what MedDL ensembles by default."""
    return tuple(sorted(int(path.name[5:]) for path in Path(folder).glob("fold_[0-9]*")
                        if (path / "checkpoint_final.pth").is_file()))


def _labels(folder: str) -> dict[str, int]:
    dataset = json.loads((Path(folder) / "dataset.json").read_text())
    return {name: int(value) for name, value in dataset["labels"].items() if int(value) != 0}


def _prepare(case: str, input_path: str, folder: str, threads: int, found: dict):
    """Everything before the measured call (loading included); returns the call. The call leaves the
    label map (k, j, i) in found["labels"]."""
    import torch

    torch.set_num_threads(threads)
    kind, mirroring = case.split(":")
    mirroring = mirroring == "on"
    start = time.perf_counter()
    if kind == "nnunet":
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=TILE_STEP, use_gaussian=True, use_mirroring=mirroring,
                                    device=torch.device("cpu"), perform_everything_on_device=False,
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(folder, use_folds=_folds(folder),
                                                       checkpoint_name="checkpoint_final.pth")
        found["load_seconds"] = time.perf_counter() - start
        data, properties = SimpleITKIO().read_images([input_path])

        def bare():
            found["labels"] = predictor.predict_single_npy_array(data, properties, None, None, False)

        return bare
    if kind == "meddl":
        from meddl.io import read_image
        from meddl.models.loading import load_model
        from meddl.segmentation.predict import segment

        model = load_model(folder)
        found["load_seconds"] = time.perf_counter() - start
        image = read_image(input_path)

        def ours():
            found["labels"] = segment(image, model, "cpu", fast=not mirroring).labels.array

        return ours
    from headless_slicer import HeadlessScene
    from MedDLLib.jobs import finish_within
    from MedDLLib.segmentation_job import SegmentationJob

    headless = found["headless"] = HeadlessScene()  # kept: the scene must outlive the call, for the export
    volume = headless.load_volume(input_path, "T1")

    def full_path():  # the warm-up starts the worker, which loads the model and keeps it
        job = SegmentationJob(headless.scene, volume, model=folder, device="cpu", fast=not mirroring)
        found["node"] = finish_within(job, JOB_TIMEOUT_S, "segmentation")

    found["export"] = lambda: _label_map(found["node"], volume, _labels(folder))
    return full_path


def _label_map(node, volume, labels: dict[str, int]):
    """The segmentation node as a label map on the volume's grid, with the model's label values."""
    import numpy as np
    from MedDLLib.segmentations import label_map_from_segmentation

    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    exported = label_map_from_segmentation(node, volume, names)
    values = np.array([0] + [labels.get(name, index + 1) for index, name in enumerate(names)], np.uint8)
    return values[exported]


def _worker_peak_mib() -> float | None:
    """Peak RSS (VmHWM) of the idle worker the Slicer path used (Linux)."""
    from MedDLLib import jobs

    for worker in jobs._idle_workers.values():
        try:
            with open(f"/proc/{worker.process.pid}/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
        except (OSError, StopIteration):
            return None
    return None


def run_case(case: str, repeats: int, input_path: str, folder: str, threads: int, labels_path: str) -> dict:
    import numpy as np
    import torch

    found: dict = {}
    result = time_call(case, _prepare(case, input_path, folder, threads, found), repeats)
    result["torch_threads"] = torch.get_num_threads()
    result["load_seconds"] = found.get("load_seconds")
    if "export" in found:
        result["worker_peak_rss_mib"] = _worker_peak_mib()
        labels = found["export"]()
    else:
        labels = found["labels"]
    np.save(labels_path, np.asarray(labels, np.uint8))
    return result


def dice_per_label(a, b, labels: dict[str, int]) -> dict[str, float]:
    from meddl.segmentation.metrics import dice

    if a.shape != b.shape:
        return {name: 0.0 for name in labels}
    return {name: dice(a == value, b == value) for name, value in labels.items()}


def _input(work: Path, quick: bool) -> tuple[str, list[int]]:
    """The T1 to segment (the MNI T1 itself, or for --quick a centred crop written to `work`) and its size."""
    import SimpleITK as sitk
    from meddl.sample_data import mni152_paths

    t1 = str(mni152_paths()["t1"])
    image = sitk.ReadImage(t1)
    if not quick:
        return t1, list(image.GetSize())
    low = [(n - QUICK_CROP) // 2 for n in image.GetSize()]
    crop = image[tuple(slice(a, a + QUICK_CROP) for a in low)]
    path = work / "t1-crop.nii.gz"
    sitk.WriteImage(crop, str(path))
    return str(path), list(crop.GetSize())


def _versions() -> dict:
    found = {}
    for package in ("meddl", "nnunetv2", "dynamic_network_architectures", "torch", "numpy", "SimpleITK",
                    "slicer-core"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _pairs(size: str) -> list[tuple]:
    """(title, baseline case, MedDL case, time target, memory target, Dice target)."""
    pairs = []
    for mirroring in ("off", "on"):
        pairs.append((f"nnU-Net 3d (3 mm), MNI152 T1 {size} at 1 mm, mirroring {mirroring}: "
                      "nnUNetPredictor vs MedDL in process", f"nnunet:{mirroring}", f"meddl:{mirroring}",
                      1.0, 1.0, DICE_TARGET))
    for mirroring in ("off", "on"):
        pairs.append((f"the same, mirroring {mirroring}: MedDL in process vs volume node -> worker -> "
                      "segmentation node", f"meddl:{mirroring}", f"slicer:{mirroring}", 1.1, None, DICE_TARGET))
    return pairs


def run_all(repeats: int, threads: int, quick: bool, folder: str, work: Path) -> dict:
    import numpy as np

    input_path, size = _input(work, quick)
    size_text = "x".join(str(n) for n in size)
    labels = _labels(folder)
    measured: dict[str, dict] = {}
    rows = []
    for title, bare, ours, time_target, memory_target, dice_target in _pairs(size_text):
        for case in (bare, ours):
            if case not in measured:
                print(f"measuring {case} ...", flush=True)
                measured[case] = harness.run_script(
                    str(Path(__file__).resolve()), "--case", case, "--repeats", str(repeats), "--input", input_path,
                    "--folder", folder, "--threads", str(threads), "--labels", str(work / f"{case}.npy"))
        time_ratio = measured[ours]["seconds"] / measured[bare]["seconds"]
        bare_peak, ours_peak = (measured[case].get("worker_peak_rss_mib") or measured[case]["peak_rss_mib"]
                                for case in (bare, ours))
        memory_ratio = ours_peak / bare_peak
        dice = dice_per_label(np.load(work / f"{bare}.npy"), np.load(work / f"{ours}.npy"), labels)
        rows.append({"pair": title, "baseline": bare, "meddl": ours,
                     "baseline_s": measured[bare]["seconds"], "meddl_s": measured[ours]["seconds"],
                     "time_ratio": time_ratio, "time_target": time_target,
                     "baseline_peak_mib": bare_peak, "meddl_peak_mib": ours_peak,
                     "memory_ratio": memory_ratio, "memory_target": memory_target,
                     "dice": dice, "dice_target": dice_target,
                     "meets_targets": (time_target is None or time_ratio <= time_target)
                     and (memory_target is None or memory_ratio <= memory_target)
                     and min(dice.values()) >= dice_target})
    return {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "versions": _versions(),
            "settings": {"repeats": repeats, "threads": threads, "quick": quick, "input_size": size,
                         "input": "MNI152 2009a T1 (nilearn)" + (f", centred {QUICK_CROP}^3 crop" if quick else ""),
                         "model": f"nnunet_folders kind {KIND!r}: {Path(folder).parent.name}/{Path(folder).name}",
                         "folds": list(_folds(folder)), "tile_step_size": TILE_STEP, "gaussian": True,
                         "perform_everything_on_device": False,
                         "timing": "median of the runs after a warm-up; model loading and image reading excluded "
                                   "on every side (the Slicer path's worker keeps the model from the warm-up)",
                         "peak_memory": "peak RSS of the case's process (ru_maxrss); for the Slicer path the "
                                        "worker's peak RSS (VmHWM)"},
            "cases": measured, "pairs": rows}


def markdown_table(report: dict) -> str:
    lines = ["| pair | baseline | MedDL | time ratio (target) | peak memory MiB: baseline / MedDL (ratio, target) "
             "| Dice per label (target) |", "|---|---|---|---|---|---|"]
    for row in report["pairs"]:
        memory = (f"{row['baseline_peak_mib']:.0f} / {row['meddl_peak_mib']:.0f} "
                  f"({row['memory_ratio']:.2f}, {'<= ' + str(row['memory_target']) if row['memory_target'] else '-'})")
        target = f"<= {row['time_target']}" if row["time_target"] else "no target"
        dice = " / ".join(f"{value:.4f}" for value in row["dice"].values())
        lines.append(f"| {row['pair']} | {row['baseline_s']:.2f} s | {row['meddl_s']:.2f} s | "
                     f"{row['time_ratio']:.2f} ({target}) | {memory} | {dice} (>= {row['dice_target']}) |")
    settings, machine = report["settings"], report["machine"]
    labels = " / ".join(next(iter(report["pairs"]))["dice"])
    lines.append(f"\nCPU only, {machine['cpu_count']} cores, {settings['threads']} threads on every side (torch and "
                 f"nnUNet_def_n_proc), median of {settings['repeats']} runs after a warm-up, each case in its own "
                 "process; model loading and image reading excluded on every side. Peak memory is the process's "
                 "peak RSS; for the worker path, the worker's. Dice per label "
                 f"({labels}) between the two label maps.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help="measured runs per case (default 3; --quick 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads on every side (default: cores)")
    parser.add_argument("--quick", action="store_true", help="a 96^3 crop, 1 repeat; results to a temporary file")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    if args.case:
        print(json.dumps(run_case(args.case, repeats, args.input, args.folder, args.threads, args.labels)))
        return 0
    from nnunet_folders import make_results_folder

    folder = str(make_results_folder(None, KIND))  # built once by nnU-Net (minutes), then cached
    os.environ.update({name: str(args.threads) for name in THREAD_VARIABLES})  # the cases and their worker
    with tempfile.TemporaryDirectory(prefix="meddl-bench-nnunet-") as work:
        report = run_all(repeats, args.threads, args.quick, folder, Path(work))
    harness.publish("nnunet", report, markdown_table(report), RESULTS, args.quick)
    return 0 if all(row["meets_targets"] for row in report["pairs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
