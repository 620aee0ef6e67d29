"""The promptable-segmentation case the server's session tests share: a random-weights nnInteractive model, two
small volumes, a prompt history for each, and the labels `meddl interact` gives locally after each step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from meddl.cli import main
from meddl.image import Image
from meddl.io import read_image, write_image

SHAPE = (24, 32, 32)


def point(image: Image, kji: tuple[int, int, int], positive: bool = True) -> dict:
    ras = image.index_to_ras() @ np.array([kji[2], kji[1], kji[0], 1.0])
    return {"kind": "point", "points": [[float(v) for v in ras[:3]]], "positive": positive}


def volume(path: Path, seed: int) -> Path:
    """A 24x32x32 volume with a bright ball in noise (off-origin, anisotropic)."""
    k, j, i = np.indices(SHAPE)
    ball = ((k - 12) ** 2 + (j - 15) ** 2 + (i - 17) ** 2 < 40).astype(np.float32)
    noise = np.random.default_rng(seed).normal(0, 0.2, SHAPE).astype(np.float32)
    write_image(Image(100 * ball + noise, (1.0, 1.0, 1.5), (3.0, -7.0, 11.0)), path)
    return path


def local_labels(model: Path, image: Path, prompts: list[dict], stem: Path) -> np.ndarray:
    prompts_file = stem.with_suffix(".json")
    prompts_file.write_text(json.dumps(prompts))
    output = stem.with_suffix(".nii.gz")
    assert main(["interact", str(image), str(model), str(prompts_file), str(output), "--device", "cpu",
                 "--progress", "none"]) == 0
    return read_image(output).array


def build_case(root: Path) -> dict:
    """{"model": folder, "images": {name: path}, "steps": {name: [(history[:n], local labels)]}} in `root`."""
    import nninteractive_folders  # needs nninteractive

    model = nninteractive_folders.build(root / "model")
    images = {name: volume(root / f"{name}.nii.gz", seed) for seed, name in enumerate(("alice", "bob"))}
    steps = {}
    for name, path in images.items():
        image = read_image(path)
        history = [point(image, (12, 15, 17)), point(image, (5, 5, 5), False), point(image, (14, 18, 16))]
        steps[name] = [(history[:n], local_labels(model, path, history[:n], root / f"{name}-{n}"))
                       for n in (1, 2, 3)]
    return {"model": model, "images": images, "steps": steps}
