"""Classification benchmark: meddl.classification.classify against the bare MONAI network on the same tensors, same run.

A batch of 3D volumes (64^3, 32 of them) through a MONAI DenseNet121: images per second and peak
memory for (a) the network called directly on the prepared tensors in batches and (b) meddl's
classify from image objects (preparation included), plus the time of one Grad-CAM map. Each case
runs in a fresh subprocess. Writes benchmarks/results/classification.json and the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedDLExtension"))
RESULTS = ROOT / "benchmarks" / "results" / "classification.json"
COUNT, SIZE, BATCH = 32, 64, 8
NETWORK = {"class": "DenseNet121", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}}


def _setup():
    import numpy as np
    import torch
    from meddl.image import Image
    from meddl.models.card import card_from_dict
    from meddl.models.loading import LoadedModel
    from meddl.models.networks import build_monai_network

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    images = [Image(rng.normal(100, 20, (SIZE, SIZE, SIZE)).astype(np.float32)) for _ in range(COUNT)]
    card = card_from_dict({"name": "bench", "task": "classification", "license": "-",
                           "input": {"channels": 1, "intensity": {"method": "zscore"}},
                           "labels": [{"value": 0, "name": "a"}, {"value": 1, "name": "b"}], "network": NETWORK,
                           "saliency": {"target_layer": "class_layers.relu"}})
    return images, LoadedModel(card, {"network": build_monai_network(NETWORK, "bench").eval()})


def _prepare(case: str):
    import torch
    from meddl.classification.predict import classify, prepare, saliency

    images, model = _setup()
    if case == "monai":
        tensors = torch.stack([prepare(image, model.card) for image in images])
        network = model.networks["network"]

        def bare():
            with torch.inference_mode():
                return [torch.softmax(network(tensors[i:i + BATCH]), 1) for i in range(0, COUNT, BATCH)]

        return bare
    if case == "meddl":
        return lambda: classify(images, model, device="cpu", batch_size=BATCH)
    return lambda: saliency(images[0], model, device="cpu")


def run_case(case: str, repeats: int) -> dict:
    return harness.time_call(case, _prepare(case), repeats)

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats)))
        return 0
    cases = {case: harness.measure(__file__, case, args.repeats) for case in ("monai", "meddl", "gradcam")}
    ratio = cases["meddl"]["seconds"] / cases["monai"]["seconds"]
    memory = cases["meddl"]["peak_rss_growth_mib"] / max(cases["monai"]["peak_rss_growth_mib"], 1.0)
    report = {"settings": {"count": COUNT, "size": SIZE, "batch": BATCH, "network": NETWORK}, "cases": cases,
              "time_ratio": ratio, "time_target": 1.10, "memory_ratio": memory, "meets_target": ratio <= 1.10}
    RESULTS.write_text(json.dumps(report, indent=1))
    table = "\n".join([
        "| | MONAI network directly | meddl classify | ratio (target) |", "|---|---|---|---|",
        f"| {COUNT} volumes of {SIZE}^3, DenseNet121, batches of {BATCH} | "
        f"{COUNT / cases['monai']['seconds']:.1f} images/s | {COUNT / cases['meddl']['seconds']:.1f} images/s | "
        f"{ratio:.2f} (<= 1.10) |",
        f"| peak memory growth | {cases['monai']['peak_rss_growth_mib']:.0f} MiB | "
        f"{cases['meddl']['peak_rss_growth_mib']:.0f} MiB | {memory:.2f} |",
        f"| one Grad-CAM map ({SIZE}^3) | | {cases['gradcam']['seconds']:.2f} s | |",
        "", "CPU only, median of 3 runs after a warm-up, each case in its own process."])
    harness.update_readme("classification", table)
    print(table)
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
