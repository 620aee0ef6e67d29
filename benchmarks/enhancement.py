"""Enhancement benchmark: MedDL's self-supervised denoiser and super-resolution against classical methods, one run.

Denoising: a 1 mm crop of the MNI T1 (96 x 112 x 96 voxels around the ventricles and basal ganglia)
with Rician noise at 3 %, 5 % and 9 % of the maximum. MedDL's denoiser with its defaults (`meddl`: a Gaussian
blur guides grouped hard thresholding and a grouped Wiener pass on the noisy image, then the Rician bias is
removed) and with `--method network` (`meddl-network`: a blind-spot network trained on the image guides the
same stages, which measures the network's share) against SimpleITK's curvature anisotropic diffusion,
scikit-image's non-local means and BM4D, each classical method with the best of a small grid of settings
given the true noise level (a favour MedDL's method does not get). PSNR, SSIM, run time and peak memory
of the best setting.
Super-resolution: the same crop with a Gaussian slice profile and 4 mm slices, back to 1 mm:
cubic B-spline, a trained-on-itself linear baseline (a 1D filter along the thick axis fitted by
least squares on the in-plane data degraded the same way) and MedDL's self-supervised network.
Each case runs in a fresh subprocess. Writes benchmarks/results/enhancement.json and the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import harness
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python")]
RESULTS = ROOT / "benchmarks" / "results" / "enhancement.json"
LEVELS = (0.03, 0.05, 0.09)
DENOISERS = ("meddl", "meddl-network", "nlm", "diffusion", "bm4d")
SUPERRES = ("cubic", "linear-self-trained", "meddl")


def _clean() -> np.ndarray:
    from meddl.io import read_image
    from meddl.sample_data import mni152_paths

    return read_image(mni152_paths()["t1"]).array.astype(np.float32)[40:136, 50:162, 50:146]


def _denoiser_settings(method: str, sigma: float) -> list:
    """The small grid of settings tried for each classical method (MedDL: its defaults only)."""
    if method == "nlm":
        return [{"h": f * sigma, "sigma": sigma, "patch_size": 3, "patch_distance": d, "fast_mode": True}
                for f in (0.6, 0.8, 1.0) for d in (3, 5)]
    if method == "diffusion":
        return [{"time_step": 0.0625, "conductance": c, "iterations": n} for c in (1.0, 2.0, 3.0) for n in (5, 10)]
    if method == "bm4d":
        return [{"sigma_psd": sigma}]
    return [{}]


def _denoise(method: str, noisy: np.ndarray, settings: dict) -> np.ndarray:
    if method in ("meddl", "meddl-network"):
        from meddl.enhancement.denoise import NETWORK_STEPS, DenoiseSettings, self_supervised_denoise
        from meddl.image import Image

        # the default guides the filter by a Gaussian blur; --method network by a blind-spot network
        settings = DenoiseSettings(device="cpu", steps=0 if method == "meddl" else NETWORK_STEPS)
        return self_supervised_denoise(Image(noisy), settings).array
    if method == "nlm":
        from skimage.restoration import denoise_nl_means

        return denoise_nl_means(noisy, **settings).astype(np.float32)
    if method == "diffusion":
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(noisy)
        smoothed = sitk.CurvatureAnisotropicDiffusion(image, settings["time_step"], settings["conductance"], 1,
                                                      settings["iterations"])
        return sitk.GetArrayFromImage(smoothed)
    import bm4d

    return np.asarray(bm4d.bm4d(noisy, settings["sigma_psd"]), np.float32)


def run_denoise_case(method: str, level: float, setting_index: int) -> dict:
    from meddl_testing import psnr, rician, ssim

    clean = _clean()
    noisy = rician(clean, level, seed=0)
    settings = _denoiser_settings(method, level * float(clean.max()))[setting_index]
    result, seconds, memory = harness.timed_once(lambda: _denoise(method, noisy, settings))
    return {"method": method, "level": level, "settings": settings, "psnr": psnr(result, clean),
            "ssim": ssim(result, clean), "seconds": seconds, "peak_mib": memory,
            "noisy_psnr": psnr(noisy, clean), "noisy_ssim": ssim(noisy, clean)}


def _linear_self_trained(thick: np.ndarray, factor: int) -> np.ndarray:
    """Cubic B-spline, then a 9-tap filter along the thick axis fitted on the degraded in-plane rows."""
    from meddl.enhancement.superres import cubic_upsample, degrade

    taps = 9
    degraded, original = degrade(thick, 1, factor), thick[:, : (thick.shape[1] - 1) // factor * factor + 1]
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(degraded, [(0, 0), (4, 4), (0, 0)], mode="edge"),
                                                       taps, axis=1)
    weights, *_ = np.linalg.lstsq(windows.reshape(-1, taps), original.reshape(-1), rcond=None)
    upsampled = cubic_upsample(thick, 0, factor)
    padded = np.pad(upsampled, [(4, 4), (0, 0), (0, 0)], mode="edge")
    return np.tensordot(np.lib.stride_tricks.sliding_window_view(padded, taps, axis=0), weights, axes=([-1], [0]))


def run_superres_case(method: str) -> dict:
    from meddl.enhancement.superres import SuperResolutionSettings, cubic_upsample, self_supervised_superres
    from meddl.image import Image
    from meddl_testing import psnr, ssim, thick_slices

    clean = _clean()
    thick = thick_slices(clean, 4)
    if method == "cubic":
        call = lambda: cubic_upsample(thick, 0, 4)  # noqa: E731
    elif method == "meddl":
        call = lambda: self_supervised_superres(Image(thick, (1.0, 1.0, 4.0)),  # noqa: E731
                                                SuperResolutionSettings(device="cpu")).array
    else:
        call = lambda: _linear_self_trained(thick, 4)  # noqa: E731
    result, seconds, memory = harness.timed_once(call)
    original = clean[: result.shape[0]]
    return {"method": method, "psnr": psnr(result, original), "ssim": ssim(result, original), "seconds": seconds,
            "peak_mib": memory}


def _subprocess(*arguments: str) -> dict:
    return harness.run_script(str(Path(__file__).resolve()), *arguments)


def best_of_grid(method: str, level: float) -> dict:
    tried = [_subprocess("--denoise", method, "--level", str(level), "--setting", str(index))
             for index in range(len(_denoiser_settings(method, 1.0)))]
    best = max(tried, key=lambda row: row["psnr"])
    return {**best, "grid_size": len(tried)}


def table(results: dict) -> str:
    lines = ["| Rician noise | method | PSNR (dB) | SSIM | time (s) | peak memory (MiB) |", "|---|---|---|---|---|---|"]
    for level in LEVELS:
        rows = [row for row in results["denoise"] if row["level"] == level]
        lines.append(f"| {level:.0%} | noisy input | {rows[0]['noisy_psnr']:.2f} | {rows[0]['noisy_ssim']:.3f} | | |")
        lines += [f"| {level:.0%} | {row['method']} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['seconds']:.1f} | "
                  f"{row['peak_mib']:.0f} |" for row in rows]
    lines += ["", "| 4 mm -> 1 mm | PSNR (dB) | SSIM | time (s) | peak memory (MiB) |", "|---|---|---|---|---|"]
    lines += [f"| {row['method']} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['seconds']:.1f} | "
              f"{row['peak_mib']:.0f} |" for row in results["superres"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--denoise", default=None)
    parser.add_argument("--level", type=float, default=None)
    parser.add_argument("--setting", type=int, default=0)
    parser.add_argument("--superres", default=None)
    args = parser.parse_args()
    if args.denoise:
        print(json.dumps(run_denoise_case(args.denoise, args.level, args.setting)))
        return
    if args.superres:
        print(json.dumps(run_superres_case(args.superres)))
        return
    results = {"denoise": [best_of_grid(method, level) for level in LEVELS for method in DENOISERS],
               "superres": [_subprocess("--superres", method) for method in SUPERRES]}
    RESULTS.write_text(json.dumps(results, indent=1))
    harness.update_readme("enhancement", table(results))
    print(table(results))


if __name__ == "__main__":
    main()
