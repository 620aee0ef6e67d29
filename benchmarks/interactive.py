"""Promptable segmentation latency: MedDL's nnInteractive session against the package's own session, in the same
run, on a 256^3 CPU volume (the real MNI152 T1, 1 mm, centred in 256^3), then the same prompts through Slicer's
local worker and through a MedDL server on loopback (one session kept per client).

The network is nnInteractive's own architecture built from plans with seeded random weights (no weights can be
downloaded here): `--preset tiny` (default; 4 stages, patch 64^3, so CPU runs take seconds) or `--preset
published` (the published ResEncL configuration, patch 192^3; minutes per prompt on a laptop CPU).
Each engine method runs in a fresh subprocess: per-prompt time (median of `--repeats` passes over the prompts,
reset between passes, after a one-prompt warm-up) and peak RSS growth from before the image was set.

Targets: MedDL / package <= 1.05 (time), <= 1.1 (memory); server / local worker <= 1.2 (time).
--quick: one pass, results to a temporary file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "MedDLExtension"), str(ROOT / "Testing" / "Python"), str(Path(__file__).resolve().parent)]
import harness  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "interactive.json"
SIZE = 256


def volume(folder: Path) -> Path:
    """The MNI152 T1 (1 mm) centred in a 256^3 grid of the same spacing, written once."""
    from meddl.image import Image
    from meddl.io import read_image, write_image
    from meddl.sample_data import mni152_paths

    path = folder / "t1_256.nrrd"
    if path.exists():
        return path
    t1 = read_image(mni152_paths()["t1"])
    array = np.zeros((SIZE,) * 3, np.float32)
    offset = [(SIZE - s) // 2 for s in t1.shape]
    array[tuple(slice(o, o + s) for o, s in zip(offset, t1.shape))] = t1.array
    origin = t1.index_to_lps() @ np.array([-offset[2], -offset[1], -offset[0], 1.0])
    write_image(Image(array, t1.spacing, tuple(origin[:3]), t1.direction), path, compress=False)
    return path


def prompts(image) -> list[dict]:
    """Point, 2D box, scribble, negative point and lasso around the volume's centre (RAS millimetres)."""
    def ras(k: float, j: float, i: float) -> list[float]:
        return [float(v) for v in (image.index_to_ras() @ np.array([i, j, k, 1.0]))[:3]]

    c = SIZE // 2
    return [
        {"kind": "point", "points": [ras(c, c, c)]},
        {"kind": "box", "points": [ras(c, c - 20, c - 25), ras(c, c + 20, c + 25)]},
        {"kind": "scribble", "points": [ras(c + 4, c - 10, c - 10), ras(c + 4, c + 10, c + 8)]},
        {"kind": "point", "points": [ras(c - 6, c + 30, c + 30)], "positive": False},
        {"kind": "lasso", "points": [ras(c - 3, c - 12, c - 12), ras(c - 3, c - 12, c + 12),
                                     ras(c - 3, c + 12, c)]},
    ]


def _rss_kib() -> int:
    return harness.rss_now_kib()


def _engine_pass(apply, reset, prompt_list) -> tuple[list[float], list[int]]:
    seconds, voxels = [], []
    for prompt in prompt_list:
        start = time.perf_counter()
        labels = apply(prompt)
        seconds.append(time.perf_counter() - start)
        voxels.append(int(np.count_nonzero(labels)))
    reset()
    return seconds, voxels


def run_engine(method: str, image_path: str, model: str, repeats: int) -> dict:
    """Inside a subprocess: MedDL's session or the package's own, on the same voxels and prompts."""
    import torch
    from meddl.interactive import Prompt, open_session
    from meddl.interactive import prompts as voxel_prompts
    from meddl.io import read_image

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use
    image = read_image(image_path)
    prompt_list = [Prompt.from_dict(p) for p in prompts(image)]
    baseline = _rss_kib()
    if method == "meddl":
        session = open_session(model, device="cpu")
        session.set_image(image)

        def apply(prompt):
            return session.apply(prompt).labels.array

        reset = session.reset
    else:
        apply, reset = _package_session(model, image, voxel_prompts)
    _engine_pass(apply, reset, prompt_list[:1])  # warm-up: first-call costs of torch and the package
    passes = [_engine_pass(apply, reset, prompt_list) for _ in range(repeats)]
    peak = harness.peak_rss_kib()
    return {"method": method, "prompt_seconds": [statistics.median(p[0][n] for p in passes)
                                                 for n in range(len(prompt_list))],
            "voxels": passes[-1][1], "peak_growth_mib": max(peak - baseline, 0) / 1024}


def _package_session(model: str, image, voxel_prompts):
    """nnInteractive's own session, called as its README shows, with MedDL's seeding (np.random and torch seeded
    before each call) so that both give the same labels."""
    import contextlib
    import io

    import torch
    from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(io.StringIO()):
        session = nnInteractiveInferenceSession(device=torch.device("cpu"), use_torch_compile=False, verbose=False,
                                                torch_n_threads=threads)
        session.initialize_from_trained_model_folder(model)
        target = np.zeros(image.shape, np.uint8)
        session.set_image(image.array[None].astype(np.float32))
        session.set_target_buffer(target)
        session._finish_preprocessing_and_initialize_interactions()
    np.random.seed(0)

    def apply(prompt):
        with contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(0)
            if prompt.kind == "point":
                session.add_point_interaction(voxel_prompts.point_voxel(image, prompt.points[0]),
                                              include_interaction=prompt.positive)
            elif prompt.kind == "box":
                session.add_bbox_interaction(voxel_prompts.box_voxels(image, *prompt.points),
                                             include_interaction=prompt.positive)
            elif prompt.kind == "scribble":
                mask, box = voxel_prompts.scribble_voxels(image, prompt.points, width=2)
                session.add_scribble_interaction(mask, include_interaction=prompt.positive, interaction_bbox=box)
            else:
                mask, box = voxel_prompts.lasso_voxels(image, prompt.points)
                session.add_lasso_interaction(mask, include_interaction=prompt.positive, interaction_bbox=box)
        return target.copy()  # MedDL hands back a copy too: the caller owns its labels

    def reset():
        with contextlib.redirect_stdout(io.StringIO()):
            session.reset_interactions()

    return apply, reset


def _prefix_file(folder: Path, prompt_list: list[dict], count: int) -> str:
    path = folder / f"prompts{count}.json"
    path.write_text(json.dumps({"prompts": prompt_list[:count]}))
    return str(path)


def run_paths(folder: Path, image_path: Path, model: Path) -> dict:
    """The same prompts, one interaction each (the whole history sent each time), through Slicer's local worker
    and through a MedDL server on loopback (a session kept for this client): end-to-end seconds per prompt."""
    import server as server_bench  # benchmarks/server.py: start a loopback server
    from meddl.cli.interact import InteractRequest
    from meddl.io import read_image
    from meddl.server import keys
    from meddl.server.client import ServerClient
    from meddl.server.interactive import RemoteInteractiveSession
    from MedDLLib.jobs import EngineJob, JobState, shut_down_workers

    prompt_list = prompts(read_image(image_path))
    local, remote = [], []
    for count in range(1, len(prompt_list) + 1):
        start = time.perf_counter()
        request = InteractRequest(str(image_path), str(model), _prefix_file(folder, prompt_list, count),
                                  str(folder / "local.nrrd"), device="cpu", compress=False)
        job = EngineJob(request, device="cpu")
        if job.wait(3600) is not JobState.SUCCEEDED:
            raise RuntimeError(f"the local worker failed: {job.error}")
        job.finish()
        local.append(time.perf_counter() - start)
        print(f"local worker, prompt {count}: {local[-1]:.2f} s", flush=True)
    shut_down_workers()  # the server's worker gets the cores to itself
    key_file = folder / "keys.txt"
    key = keys.add_key("bench", key_file)
    process, url = server_bench.start_server(folder, key_file, "--allow-model-uploads")
    try:
        session = RemoteInteractiveSession(ServerClient(url, key), image_path, model, device="cpu", compress=False)
        for count in range(1, len(prompt_list) + 1):
            start = time.perf_counter()
            session.interact(_prefix_file(folder, prompt_list, count), folder / "remote.nrrd")
            remote.append(time.perf_counter() - start)
            print(f"server, prompt {count}: {remote[-1]:.2f} s", flush=True)
        session.close()
        same = bool(np.array_equal(read_image(folder / "local.nrrd").array, read_image(folder / "remote.nrrd").array))
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"local_worker_seconds": local, "server_seconds": remote, "same_labels": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pass; results to a temporary file")
    parser.add_argument("--preset", choices=("tiny", "published"), default="tiny")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the prompts (median per prompt)")
    parser.add_argument("--engine", nargs=3, metavar=("METHOD", "IMAGE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    if args.engine:
        print(json.dumps(run_engine(*args.engine, repeats)))
        return 0
    import nninteractive_folders

    with tempfile.TemporaryDirectory(prefix="meddl-bench-interactive-") as work:
        folder = Path(work)
        image = volume(folder)
        model = nninteractive_folders.build(folder / "model", preset=args.preset)
        rows = []
        for method in ("package", "meddl"):
            rows.append(harness.run_script(__file__, "--engine", method, str(image), str(model), "--repeats",
                                           str(repeats)))
            print(json.dumps(rows[-1]), flush=True)
        paths = run_paths(folder, image, model)
    report = {**summarise(rows, args.preset), "paths": paths}
    warm_local, warm_remote = sum(paths["local_worker_seconds"][1:]), sum(paths["server_seconds"][1:])
    report["server_ratio"] = warm_remote / warm_local
    report["targets_met"] = report["targets_met"] and report["server_ratio"] <= 1.2 and paths["same_labels"]
    harness.publish("interactive", report, markdown_table(report), RESULTS, args.quick)
    return 0 if report["targets_met"] else 1


def summarise(rows: list[dict], preset: str) -> dict:
    package, meddl = rows
    time_ratio = sum(meddl["prompt_seconds"]) / sum(package["prompt_seconds"])
    memory_ratio = meddl["peak_growth_mib"] / max(package["peak_growth_mib"], 1e-9)
    return {"machine": {"cpu_count": os.cpu_count()}, "volume": f"MNI152 T1 1 mm in {SIZE}^3", "preset": preset,
            "rows": rows, "time_ratio": time_ratio, "memory_ratio": memory_ratio,
            "same_labels": package["voxels"] == meddl["voxels"],
            "targets_met": time_ratio <= 1.05 and memory_ratio <= 1.1 and package["voxels"] == meddl["voxels"]}


def markdown_table(report: dict) -> str:
    kinds = ["point", "box", "scribble", "point (negative)", "lasso"]
    lines = [f"| {report['volume']}, CPU, {report['preset']} network | " + " | ".join(kinds)
             + " | peak memory growth |", "|---" * (len(kinds) + 2) + "|"]
    for row in report["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(f"{s:.2f} s" for s in row["prompt_seconds"])
                     + f" | {row['peak_growth_mib']:.0f} MiB |")
    paths = report["paths"]
    lines += ["", "| path (whole history sent each time) | first prompt (opens the session) | "
              + " | ".join(kinds[1:]) + " |", "|---" * (len(kinds) + 1) + "|"]
    for name, key in (("Slicer's local worker", "local_worker_seconds"), ("server on loopback", "server_seconds")):
        lines.append(f"| {name} | " + " | ".join(f"{s:.2f} s" for s in paths[key]) + " |")
    lines.append(f"\nServer / local worker, prompts 2-5: {report['server_ratio']:.3f} (target <= 1.2); same labels: "
                 f"{'yes' if paths['same_labels'] else '**no**'}.")
    lines.append(f"\nMedDL / package: time {report['time_ratio']:.3f} (target <= 1.05), memory "
                 f"{report['memory_ratio']:.3f} (target <= 1.1); same labels after every prompt: "
                 f"{'yes' if report['same_labels'] else '**no**'}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
