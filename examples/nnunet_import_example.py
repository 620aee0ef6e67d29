"""Import an nnU-Net v2 results folder into MedDL's model library and segment with it, as a user would.

The folder is a genuine one: the test suite's nnU-Net folder factory plans, preprocesses and trains it (briefly,
on CPU) with nnunetv2 itself on the MNI152 T1 at 3 mm with grey/white matter labels, and caches it
(~/.cache/meddl-tests; a few minutes the first time). The example then runs, through the command line:

    meddl models import DatasetNNN_Name/ --id mni-tissue-nnunet
    meddl segment T1.nii.gz labels.nii.gz --model mni-tissue-nnunet [--fast]

and compares the labels with nnU-Net's own predictor on the same input (Dice per label).

    .venv/bin/python examples/nnunet_import_example.py --out nnunet-example
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python")]

import nnunet_folders  # noqa: E402
from meddl.io import read_image  # noqa: E402
from meddl.segmentation.metrics import dice  # noqa: E402


def meddl(*arguments: str, environment: dict) -> None:
    print("$ meddl", " ".join(arguments))
    subprocess.run([sys.executable, "-m", "meddl", *arguments], check=True, env=environment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("nnunet-example"))
    parser.add_argument("--fast", action="store_true", help="no test-time mirroring")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = nnunet_folders.make_results_folder(None, "3d")
    case = nnunet_folders.raw_cases(results)[nnunet_folders.training_case(results)][0]
    library = tempfile.mkdtemp(prefix="meddl-example-library-")  # the user's own library stays untouched
    environment = {**os.environ, "MEDDL_MODELS_DIR": library,
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "MedDLExtension"), os.environ.get("PYTHONPATH", "")])}
    meddl("models", "import", str(results.parent), "--id", "mni-tissue-nnunet", environment=environment)
    meddl("models", "info", "mni-tissue-nnunet", environment=environment)
    labels_path = args.out / "labels.nii.gz"
    meddl("segment", str(case), str(labels_path), "--model", "mni-tissue-nnunet", "--device", "cpu",
          *(["--fast"] if args.fast else []), environment=environment)
    reference, _ = nnunet_folders.reference_labels(results, [case], mirroring=not args.fast,
                                                   output_folder=args.out / "nnunet-reference")
    ours = read_image(labels_path).array
    for value, name in ((1, "grey matter"), (2, "white matter")):
        print(f"{name}: Dice against nnUNetPredictor {dice(ours == value, reference == value):.4f}")


if __name__ == "__main__":  # nnU-Net starts worker processes when it builds the folder
    main()
