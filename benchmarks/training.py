"""Training benchmark: meddl's segmentation training against a bare MONAI training loop, and Dice per CPU minute.

(1) Throughput: the same UNet, loss (DiceCE), optimiser (AdamW), patch size and batch on the 2 mm
MNI T1 with grey/white-matter labels, in the same run: (a) `train_segmentation` end to end (set-up,
patch sampling, the loop and writing the bundle) and (b) a bare MONAI loop (RandCropByPosNegLabeld
in a MONAI Dataset and DataLoader, forward, backward, step). Samples per second; target ratio >= 0.9.
(2) Dice versus minutes: slabs 0-45 train, 55-95 validate (held out), with growing time budgets;
and few-shot from every 10th axial slice, Dice on the other slices.
Each case runs in a fresh subprocess. Writes benchmarks/results/training.json and the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python")]
RESULTS = ROOT / "benchmarks" / "results" / "training.json"
STEPS, BATCH, PATCH = 60, 4, (32, 32, 32)
LABELS = {1: "grey matter", 2: "white matter"}
BUDGETS_MIN = (0.5, 1.0, 2.0)


def _data():
    from meddl.sample_data import mni152_paths
    from meddl_testing import mni_tissue_slabs, mni_tissue_volume

    return mni_tissue_volume(mni152_paths()), mni_tissue_slabs(mni152_paths(), (0, 45), (55, 95))


def _settings(**changes):
    from meddl.segmentation.training import SegmentationTrainingSettings

    return SegmentationTrainingSettings(**{"patch_size": PATCH, "batch_size": BATCH, "device": "cpu", **changes})


def _meddl_loop():
    from meddl.segmentation.training import train_segmentation

    (image, label), _ = _data()

    def run():
        with tempfile.TemporaryDirectory() as folder:
            train_segmentation([(image, label)], LABELS, Path(folder) / "b", _settings(epochs=1, steps_per_epoch=STEPS))

    return run


def _monai_loop():
    import torch
    from meddl.models.networks import build_monai_network
    from meddl.segmentation.training import _card, prepare_volumes
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.transforms import RandCropByPosNegLabeld

    (image, label), _ = _data()
    card = _card(LABELS, _settings(), "bare", None)

    def run():
        torch.manual_seed(0)
        x, y = prepare_volumes([(image, label)], card)[0]
        crop = RandCropByPosNegLabeld(["image", "label"], "label", PATCH, pos=1, neg=1, num_samples=BATCH)
        data = DataLoader(Dataset([{"image": x[None], "label": y[None]}] * STEPS, transform=crop), batch_size=1)
        network = build_monai_network(card["network"], "bare").train()
        optimiser, loss_fn = torch.optim.AdamW(network.parameters(), lr=2e-3), DiceCELoss(to_onehot_y=True,
                                                                                          softmax=True)
        for batch in data:
            optimiser.zero_grad()
            loss_fn(network(batch["image"]), batch["label"]).backward()
            optimiser.step()

    return run


def _dice_cases() -> list[dict]:
    import numpy as np
    from meddl.models.loading import load_model
    from meddl.segmentation.metrics import dice
    from meddl.segmentation.predict import segment
    from meddl.segmentation.training import train_segmentation

    (image, label), (train, val) = _data()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for minutes in BUDGETS_MIN:
            settings = _settings(epochs=10_000, steps_per_epoch=10, time_budget_s=60 * minutes, validate_every=5)
            start = time.perf_counter()
            result = train_segmentation([train], LABELS, Path(folder) / f"slab{minutes}", settings, [val])
            rows.append({"task": "slabs 0-45 -> held-out slabs 55-95", "budget_min": minutes,
                         "seconds": time.perf_counter() - start, "epochs": len(result.history),
                         "dice": result.validation_dice})
        spanned = np.flatnonzero(label.array.any(axis=(1, 2)))
        sparse = np.zeros_like(label.array)
        sparse[spanned[::10]] = label.array[spanned[::10]]
        others = np.setdiff1d(spanned, spanned[::10])
        for minutes in BUDGETS_MIN[:2]:
            settings = _settings(epochs=10_000, steps_per_epoch=10, time_budget_s=60 * minutes, batch_size=8)
            start = time.perf_counter()
            result = train_segmentation([(image, label.with_array(sparse))], LABELS, Path(folder) / f"few{minutes}",
                                        settings)
            seconds = time.perf_counter() - start
            predicted = segment(image, load_model(result.folder), device="cpu").labels.array
            rows.append({"task": "few-shot: every 10th axial slice -> the other slices", "budget_min": minutes,
                         "seconds": seconds, "epochs": len(result.history),
                         "dice": {name: dice(predicted[others] == value, label.array[others] == value)
                                  for value, name in LABELS.items()}})
    return rows


def run_case(case: str, repeats: int) -> dict:
    if case == "dice":
        return {"case": case, "rows": _dice_cases()}
    result = harness.time_call(case, _meddl_loop() if case == "meddl" else _monai_loop(), repeats)
    result["samples_per_second"] = STEPS * BATCH / result["seconds"]
    return result


def table(results: dict) -> str:
    speed = results["throughput"]
    lines = ["| training (CPU, 2 cores) | samples/s | ratio vs bare MONAI loop (target >= 0.9) |", "|---|---|---|",
             f"| bare MONAI loop | {speed['monai']['samples_per_second']:.1f} | 1.00 |",
             f"| meddl train | {speed['meddl']['samples_per_second']:.1f} | {speed['ratio']:.2f} |", "",
             "| task | CPU budget (min) | epochs | Dice grey / white |", "|---|---|---|---|"]
    for row in results["dice"]:
        lines.append(f"| {row['task']} | {row['budget_min']} | {row['epochs']} | "
                     f"{row['dice']['grey matter']:.3f} / {row['dice']['white matter']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats)))
        return
    script = str(Path(__file__).resolve())
    throughput = {case: harness.measure(script, case, args.repeats) for case in ("monai", "meddl")}
    throughput["ratio"] = throughput["meddl"]["samples_per_second"] / throughput["monai"]["samples_per_second"]
    results = {"throughput": throughput, "dice": harness.measure(script, "dice", 1)["rows"],
               "steps": STEPS, "batch": BATCH, "patch": PATCH}
    RESULTS.write_text(json.dumps(results, indent=1))
    harness.update_readme("training", table(results))
    print(table(results))


if __name__ == "__main__":
    main()
