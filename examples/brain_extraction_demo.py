"""`make demo`: brain extraction of the real MNI152 T1, the same way Slicer's panel does it.

The T1 (from the nilearn wheel) is loaded into an MRML scene by Slicer's own volume reader,
segmented by the default model in a background worker process, saved as .seg.nrrd and as a
NIfTI label map, rendered in Slicer slice views to PNG, and scored against the reference brain
mask (grey + white matter probability > 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python")]  # MedDL, and Slicer without Qt

from headless_slicer import HeadlessScene, render_slice_view  # noqa: E402
from meddl.io import read_image, write_image  # noqa: E402
from meddl.models import catalog  # noqa: E402
from meddl.sample_data import mni152_paths, reference_brain_mask  # noqa: E402
from meddl.segmentation.metrics import dice  # noqa: E402
from MedDLLib.segmentation_job import SegmentationJob  # noqa: E402
from MedDLLib.segmentations import label_map_from_segmentation  # noqa: E402
from MedDLLib.volumes import image_from_volume_node  # noqa: E402

MODEL = "deepbet-brain-extraction"
VIEWS = {
    "axial": ("Axial", "Red", 10.0),
    "coronal": ("Coronal", "Green", -18.0),
    "sagittal": ("Sagittal", "Yellow", 0.0),
}


def run_demo(out: Path, device: str = "auto") -> dict:
    """Run the whole job and return its summary (also written to summary.json)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = mni152_paths()
    headless = HeadlessScene()
    volume = headless.load_volume(str(paths["t1"]), "MNI152 T1")

    start = time.perf_counter()
    job = SegmentationJob(headless.scene, volume, MODEL, device)
    last = -1
    while job.wait(timeout=0.2).value == "running":
        percent = int(100 * job.engine.fraction)
        if percent != last:
            print(f"\r  {percent:3d}% {job.engine.message:<30}", end="", flush=True)
            last = percent
    segmentation_node = job.finish()
    seconds = time.perf_counter() - start
    print(f"\r  100% done in {seconds:.1f} s{'':<20}")

    headless.save_node(segmentation_node, str(out / "mni152_t1_brain.seg.nrrd"))
    labels = label_map_from_segmentation(segmentation_node, volume, ["Brain"])
    write_image(image_from_volume_node(volume).with_array(labels), out / "mni152_t1_brain_labels.nii.gz")
    segmentation_node.GetDisplayNode().SetOpacity2DFill(0.35)
    for view, (orientation, name, offset) in VIEWS.items():
        render_slice_view(headless, volume, str(out / f"mni152_t1_brain_{view}.png"), orientation, 512, offset, name)

    reference = reference_brain_mask(read_image(paths["gm"]).array, read_image(paths["wm"]).array)
    card_dice = catalog.get_entry(MODEL)["card"]["accuracy"][0]["value"]
    summary = {"model": MODEL, "dice": round(dice(labels > 0, reference), 4), "card_dice": card_dice,
               "seconds": round(seconds, 2), "device": device,
               "outputs": sorted({p.name for p in out.iterdir()} | {"summary.json"})}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"MedDL demo: brain extraction of the MNI152 T1 with {MODEL}")
    summary = run_demo(args.out, args.device)
    print(f"Dice against the reference brain mask (GM + WM > 0.5): {summary['dice']:.4f} "
          f"(model card states {summary['card_dice']})")
    print(f"Run time (volume node -> worker process -> segmentation node): {summary['seconds']:.1f} s")
    print(f"Outputs in {args.out}/: {', '.join(summary['outputs'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
