"""Segmentation benchmark: MedDL against the bare library call, every pair measured in the same run.

(1) A MONAI UNet built here, on a 256x256x128 volume and on the MNI T1: MONAI's
    sliding_window_inference called directly on the tensor vs meddl's `segment` in process.
(2) The default brain-extraction model on the MNI T1: deepbet's own run_bet vs MedDL in process
    (file in, file out), and vs the full Slicer path (volume node -> worker process -> segmentation node).

Each case runs in a fresh subprocess (one warm-up, then the median of --repeats runs) so that its
peak memory (growth of the process's peak RSS over the state just before the measured call) is
its own. Writes benchmarks/results/segmentation.json and the table in README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import harness
from harness import time_call

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python")]
RESULTS = ROOT / "benchmarks" / "results" / "segmentation.json"
ROI, OVERLAP, SW_BATCH = (96, 96, 96), 0.25, 2
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [16, 32, 64, 128], "strides": [2, 2, 2],
        "num_res_units": 1}



def _unet():
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(**UNET).eval()


def _volume(name: str):
    """Engine image for 'synthetic' (256x256x128 smooth blobs) or 'mni' (the real T1)."""
    import numpy as np
    from meddl.image import Image
    from meddl.io import read_image
    from meddl.sample_data import mni152_paths

    if name == "mni":
        return read_image(mni152_paths()["t1"])
    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[0:128, 0:256, 0:256].astype(np.float32)
    array = 100 * np.sin(i / 17.0) * np.cos(j / 23.0) + 50 * np.sin(k / 11.0) + rng.normal(0, 5, (128, 256, 256))
    return Image(array.astype(np.float32), (0.8, 0.8, 1.5))


def _card():
    from meddl.models.card import card_from_dict

    return card_from_dict({
        "name": "benchmark-unet", "task": "segmentation", "license": "Apache-2.0",
        "input": {"channels": 1, "intensity": {"method": "zscore"}},
        "inference": {"roi_size": list(ROI), "overlap": OVERLAP, "sw_batch_size": SW_BATCH},
        "output": {"mode": "argmax"}, "labels": [{"value": 1, "name": "a"}, {"value": 2, "name": "b"}]})


def _prepare(case: str):
    """Everything before the measured call; returns the call."""
    import torch

    torch.set_grad_enabled(False)
    kind, volume_name = case.split(":")
    if kind in ("unet-monai", "unet-meddl"):
        image, network = _volume(volume_name), _unet()
        if kind == "unet-monai":
            from monai.inferers import sliding_window_inference

            tensor = torch.from_numpy(image.array.transpose(2, 1, 0).astype("float32"))[None, None]
            tensor = (tensor - tensor.mean()) / tensor.std()
            return lambda: sliding_window_inference(tensor, ROI, SW_BATCH, network, overlap=OVERLAP)
        from meddl.models.loading import LoadedModel
        from meddl.segmentation.predict import segment

        model = LoadedModel(_card(), {"network": network})
        return lambda: segment(image, model, device="cpu")
    from meddl.sample_data import mni152_paths

    t1, out = str(mni152_paths()["t1"]), tempfile.mkdtemp(prefix="meddl-bench-")
    if kind == "deepbet-run_bet":
        from deepbet import run_bet

        return lambda: run_bet([t1], mask_paths=[f"{out}/mask.nii.gz"], no_gpu=True)
    if kind == "deepbet-meddl":
        from meddl.segmentation.predict import segment_file

        return lambda: segment_file(t1, f"{out}/mask.nii.gz", "deepbet-brain-extraction", device="cpu")
    from headless_slicer import HeadlessScene
    from MedDLLib.jobs import shut_down_workers
    from MedDLLib.segmentation_job import SegmentationJob

    headless = HeadlessScene()
    volume = headless.load_volume(t1)

    def full_path():
        if kind == "deepbet-full-cold":
            shut_down_workers()  # every run starts a new worker, as the first Apply after Slicer starts
        job = SegmentationJob(headless.scene, volume, "deepbet-brain-extraction", "cpu")
        job.wait()
        return job.finish()

    return full_path


def run_case(case: str, repeats: int) -> dict:
    return time_call(case, _prepare(case), repeats)

def measure(case: str, repeats: int) -> dict:
    return harness.measure(__file__, case, repeats)

PAIRS = [
    ("UNet, 256x256x128 synthetic", "unet-monai:synthetic", "unet-meddl:synthetic", 1.10, 1.5),
    ("UNet, MNI152 T1 197x233x189", "unet-monai:mni", "unet-meddl:mni", 1.10, 1.5),
    ("deepbet, MNI152 T1, in process", "deepbet-run_bet:mni", "deepbet-meddl:mni", 1.10, None),
    ("deepbet, MNI152 T1, volume node -> worker -> segmentation node", "deepbet-run_bet:mni", "deepbet-full:mni",
     1.5, None),
    ("the same, first Apply (worker started cold)", "deepbet-run_bet:mni", "deepbet-full-cold:mni", None, None),
]


def run_all(repeats: int) -> dict:
    measured: dict[str, dict] = {}
    rows = []
    for title, bare, ours, time_target, memory_target in PAIRS:
        for case in (bare, ours):
            if case not in measured:
                print(f"measuring {case} ...", flush=True)
                measured[case] = measure(case, repeats)
        time_ratio = measured[ours]["seconds"] / measured[bare]["seconds"]
        memory_ratio = measured[ours]["peak_rss_growth_mib"] / max(measured[bare]["peak_rss_growth_mib"], 1.0)
        rows.append({"pair": title, "baseline": bare, "meddl": ours,
                     "baseline_s": measured[bare]["seconds"], "meddl_s": measured[ours]["seconds"],
                     "time_ratio": time_ratio, "time_target": time_target,
                     "baseline_peak_mib": measured[bare]["peak_rss_growth_mib"],
                     "meddl_peak_mib": measured[ours]["peak_rss_growth_mib"],
                     "memory_ratio": memory_ratio, "memory_target": memory_target,
                     "meets_targets": (time_target is None or time_ratio <= time_target)
                     and (memory_target is None or memory_ratio <= memory_target)})
    return {"machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "settings": {"repeats": repeats, "roi": ROI, "overlap": OVERLAP, "sw_batch_size": SW_BATCH, "unet": UNET},
            "cases": measured, "pairs": rows}


def markdown_table(report: dict) -> str:
    lines = ["| pair | baseline | MedDL | time ratio (target) | peak memory MiB: baseline / MedDL (ratio, target) |",
             "|---|---|---|---|---|"]
    for row in report["pairs"]:
        memory = (f"{row['baseline_peak_mib']:.0f} / {row['meddl_peak_mib']:.0f} "
                  f"({row['memory_ratio']:.2f}, {'<= ' + str(row['memory_target']) if row['memory_target'] else '-'})")
        target = f"<= {row['time_target']}" if row["time_target"] else "no target"
        lines.append(f"| {row['pair']} | {row['baseline_s']:.2f} s | {row['meddl_s']:.2f} s | "
                     f"{row['time_ratio']:.2f} ({target}) | {memory} |")
    machine = report["machine"]
    lines.append(f"\nCPU only, {machine['cpu_count']} cores, median of {report['settings']['repeats']} runs "
                 "after a warm-up, each case in its own process. Peak memory is the growth of the process's peak "
                 "RSS during the runs; the worker path's inference memory is in the worker process, not counted.")
    return "\n".join(lines)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats)))
        return 0
    report = run_all(args.repeats)
    RESULTS.write_text(json.dumps(report, indent=1))
    table = markdown_table(report)
    harness.update_readme("segmentation", table)
    print(table)
    return 0 if all(row["meets_targets"] for row in report["pairs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
