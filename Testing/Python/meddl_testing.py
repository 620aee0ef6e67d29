"""Test helpers: geometry cases, small models built in the test (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from meddl.image import Image


def oblique_direction(angle: float = 0.3) -> np.ndarray:
    """A proper rotation about two axes: no axis is aligned with the world."""
    c, s = np.cos(angle), np.sin(angle)
    about_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return about_z @ about_x


def tiny_unet(in_channels: int = 1, out_channels: int = 2) -> torch.nn.Module:
    """A small MONAI UNet with fixed random weights (no training needed to test plumbing)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=(4, 8),
                strides=(2,), num_res_units=0).eval()


UNET_SPEC = {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                        "channels": [4, 8], "strides": [2], "num_res_units": 0}}


def card_dict(labels: int = 1, **overrides) -> dict:
    """A complete model card for a test model with `labels` labels (argmax, background at 0)."""
    card = {
        "name": "test-unet", "task": "segmentation", "license": "Apache-2.0",
        "input": {"channels": 1, "intensity": {"method": "zscore"}},
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "sw_batch_size": 2},
        "output": {"mode": "argmax"},
        "labels": [{"value": v, "name": f"Label {v}"} for v in range(1, labels + 1)],
        "network": {**UNET_SPEC, "args": {**UNET_SPEC["args"], "out_channels": labels + 1}},
    }
    card.update(overrides)
    return card


def write_state_dict_model(folder: Path, labels: int = 1, **card_overrides) -> Path:
    """model.pt (state dict) + model.json (card) in `folder`; returns the .pt path."""
    network = tiny_unet(out_channels=labels + 1)
    path = folder / "model.pt"
    torch.save(network.state_dict(), path)
    (folder / "model.json").write_text(json.dumps(card_dict(labels, **card_overrides)))
    return path


def write_torchscript_model(folder: Path, labels: int = 1) -> Path:
    network = tiny_unet(out_channels=labels + 1)
    path = folder / "model.ts"
    torch.jit.script(network).save(str(path))
    (folder / "model.json").write_text(json.dumps(card_dict(labels)))
    return path


def blob_image(shape=(24, 20, 28), spacing=(1.0, 1.2, 0.9)) -> Image:
    """A bright ellipsoid on a noisy background, oblique geometry."""
    rng = np.random.default_rng(1)
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(shape) / 2
    inside = ((k - centre[0]) / 7) ** 2 + ((j - centre[1]) / 6) ** 2 + ((i - centre[2]) / 9) ** 2 < 1
    array = (100 * inside + rng.normal(0, 5, shape)).astype(np.float32)
    return Image(array, spacing, (3.0, -4.0, 5.0), oblique_direction(0.2))


class BandNet(torch.nn.Module):
    """Logit of channel c is -(x - c)^2: argmax returns the input's nearest integer in 0..C-1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("bands", torch.arange(channels, dtype=torch.float32).reshape(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x - self.bands) ** 2)


def write_band_model(folder: Path, labels: int = 3) -> Path:
    """A TorchScript multi-label model whose output is exactly predictable, with its card."""
    path = folder / "bands.ts"
    torch.jit.script(BandNet(labels + 1)).save(str(path))
    card = card_dict(labels, input={"channels": 1, "intensity": {"method": "none"}})
    card["labels"] = [{"value": v, "name": name, "color": color} for v, name, color in
                      [(1, "Liver", "#dc8c64"), (2, "Spleen", "#9d6c89"), (3, "Kidney", "#b97a5a")][:labels]]
    card["labels"][0]["terminology"] = {
        "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
        "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"},
    }
    (folder / "bands.json").write_text(json.dumps(card))
    return path


def band_volume(shape=(12, 14, 16)) -> np.ndarray:
    """Integer regions 0..3 with distinct shapes (so a transposed or flipped result cannot match)."""
    array = np.zeros(shape, np.float32)
    array[2:6, 3:10, 4:12] = 1
    array[7:10, 2:5, 1:6] = 2
    array[8:11, 9:13, 10:15] = 3
    return array


def write_bundle(folder, inference_extra=None, torchscript=False):
    """A MONAI bundle in the Model Zoo layout (metadata.json, inference.json, models/); returns its network."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    metadata = {
        "name": "Test bundle", "version": "0.1.0", "license": "Apache-2.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": "MR", "num_channels": 1, "spatial_shape": [16, 16, 16]}},
            "outputs": {"pred": {"type": "image", "num_channels": 3,
                                 "channel_def": {"0": "background", "1": "grey matter", "2": "white matter"}}},
        },
    }
    network_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8],
                   "strides": [2], "num_res_units": 0}
    inference = {
        "network_def": network_def,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 100, "b_min": 0, "b_max": 1,
             "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.5},
        **(inference_extra or {}),
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    network = tiny_unet(out_channels=3)
    if torchscript:
        torch.jit.script(network).save(str(folder / "models" / "model.ts"))
    else:
        torch.save(network.state_dict(), folder / "models" / "model.pt")
    return network


def mni_tissue_patches(mni: dict, slices: tuple[int, int], per_class: int, radius: int = 8, seed: int = 0,
                       two_d: bool = False):
    """Patches of the real MNI T1 centred on voxels with grey (0) or white (1) matter probability > 0.8.

    `slices` limits the patch centres to a range of axial slices, so training and test patches can
    come from separate regions of the brain. With `two_d`, each patch is one axial slice.
    """
    from meddl.io import read_image
    from meddl.sample_data import tissue_probability

    t1, gm, wm = (read_image(mni[key]) for key in ("t1", "gm", "wm"))
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, tissue in enumerate((gm, wm)):
        centres = np.argwhere(tissue_probability(tissue.array)[slices[0]:slices[1]] > 0.8)
        centres[:, 0] += slices[0]
        inside = np.all((centres[:, 1:] >= radius) & (centres[:, 1:] < np.array(t1.shape[1:]) - radius), axis=1)
        for k, j, i in centres[inside][rng.choice(int(inside.sum()), per_class, replace=False)]:
            depth = slice(k, k + 1) if two_d else slice(k - radius, k + radius)
            patch = t1.array[depth, j - radius:j + radius, i - radius:i + radius].astype(np.float32)
            images.append(Image(patch))
            labels.append(label)
    return images, labels


def mni_tissue_volume(mni: dict) -> tuple[Image, Image]:
    """The MNI T1 at 2 mm with labels 1 = grey, 2 = white matter (probability > 0.5, the larger wins)."""
    from meddl.io import read_image
    from meddl.sample_data import tissue_probability

    t1, gm, wm = (read_image(mni[key]) for key in ("t1", "gm", "wm"))
    grey, white = tissue_probability(gm.array), tissue_probability(wm.array)
    labels = np.zeros(t1.shape, np.uint8)
    labels[(grey > 0.5) & (grey >= white)] = 1
    labels[(white > 0.5) & (white > grey)] = 2

    def half(array):
        return Image(np.ascontiguousarray(array[::2, ::2, ::2]), tuple(2 * s for s in t1.spacing), t1.origin,
                     t1.direction)

    return half(t1.array.astype(np.float32)), half(labels)


def mni_tissue_slabs(mni: dict, train_slices: tuple[int, int], val_slices: tuple[int, int]):
    """`mni_tissue_volume` cut into a training slab and a validation slab of axial slices that do not overlap."""
    image, label = mni_tissue_volume(mni)
    rest = image.shape[1:]
    return [tuple(volume.crop((a, 0, 0), (b, *rest)) for volume in (image, label))
            for a, b in (train_slices, val_slices)]


def rician(array: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    """Rician noise of standard deviation `level` x the image maximum (magnitude of a complex Gaussian)."""
    rng = np.random.default_rng(seed)
    sigma = level * float(array.max())
    real = array + rng.normal(0.0, sigma, array.shape)
    return np.sqrt(real**2 + rng.normal(0.0, sigma, array.shape) ** 2).astype(np.float32)


def psnr(estimate: np.ndarray, clean: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, the peak being the clean image's maximum."""
    mse = float(np.mean((estimate.astype(np.float64) - clean) ** 2))
    return 10.0 * np.log10(float(clean.max()) ** 2 / mse)


def ssim(estimate: np.ndarray, clean: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(clean.astype(np.float64), estimate.astype(np.float64),
                                       data_range=float(clean.max() - clean.min())))


def thick_slices(array: np.ndarray, factor: int) -> np.ndarray:
    """A thick-slice acquisition along axis 0: Gaussian slice profile (FWHM = new spacing), every factor-th slice."""
    from scipy import ndimage

    sigma = factor / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return ndimage.gaussian_filter1d(array.astype(np.float32), sigma, axis=0, mode="nearest")[::factor]


def smooth_random_field(grid: Image, amplitude_mm: float, control_points: int = 5, seed: int = 0) -> np.ndarray:
    """A smooth random displacement field (k, j, i, 3) in LPS mm: random control vectors, cubic-interpolated."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, amplitude_mm, (control_points,) * 3 + (3,))
    components = [ndimage.zoom(coarse[..., c], [n / control_points for n in grid.shape[:3]], order=3,
                               grid_mode=True, mode="nearest") for c in range(3)]
    return np.stack(components, axis=-1)


def inverse_field(displacement: np.ndarray, grid: Image, iterations: int = 30) -> np.ndarray:
    """D' with x + D'(x) = (id + D)^-1(x), by fixed-point iteration D'(x) = -D(x + D'(x))."""
    import torch
    from meddl.registration.fields import lps_points, sample

    points = lps_points(grid)
    field = torch.from_numpy(np.moveaxis(displacement, -1, 0).copy())
    inverse = -field.clone()
    for _ in range(iterations):
        inverse = -sample(field, grid, points + inverse.permute(1, 2, 3, 0), padding="border")
    return inverse.permute(1, 2, 3, 0).numpy()


def deformed_copy(image: Image, labels: Image, amplitude_mm: float, seed: int = 0):
    """(moving image, moving labels, true fixed->moving displacement) for a known smooth deformation.

    moving(y) = image(y + G(y)) for a random smooth G, so the true registration is T = (id + G)^-1.
    """
    from meddl.registration.fields import warp

    generator = smooth_random_field(image, amplitude_mm, seed=seed)
    moving = warp(image, image, generator)
    moving_labels = warp(labels, labels, generator, labels=True)
    return moving, moving_labels, inverse_field(generator, image)


def write_task_models(folder: Path) -> dict[str, Path]:
    """One model of every task, made the way a user makes them (a few training steps each; the promptable one
    with random weights), and the images they run on: noisy.nii.gz, fixed.nii.gz and moving.nii.gz in `folder`."""
    from meddl.classification.training import TrainingSettings, train_classifier
    from meddl.cli import main
    from meddl.io import write_image

    rng = np.random.default_rng(0)
    clean = blob_image(shape=(20, 24, 24), spacing=(1.0, 1.0, 1.0))
    write_image(clean.with_array(rician(clean.array * 100 + 20, 5.0)), folder / "noisy.nii.gz")
    write_image(clean.with_array(clean.array * 100 + 20), folder / "fixed.nii.gz")
    write_image(clean.with_array(np.roll(clean.array, 2, axis=2) * 100 + 20), folder / "moving.nii.gz")
    assert main(["enhance", str(folder / "noisy.nii.gz"), str(folder / "den.nii.gz"), "--task", "denoise",
                 "--steps", "20", "--save-model", str(folder / "den.pt"), "--device", "cpu", "--progress", "none"]) == 0
    assert main(["train-registration", "--images", str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"),
                 "--out", str(folder / "reg.pt"), "--steps", "3", "--device", "cpu", "--progress", "none"]) == 0
    images = [Image(rng.normal(label, 1.0, (16, 16, 16)).astype(np.float32)) for label in (0, 1) * 4]
    classifier = train_classifier(images, [0, 1] * 4, ["low", "high"], folder / "tissue", TrainingSettings(epochs=1))
    (folder / "seg").mkdir()
    import nninteractive_folders  # a promptable model: nnInteractive's architecture, random weights

    return {"segmentation": write_state_dict_model(folder / "seg", labels=2),
            "classification": classifier.folder / "model.pt", "enhancement": folder / "den.pt",
            "registration": folder / "reg.pt", "promptable": nninteractive_folders.build(folder / "clicks")}


def write_dicom_series(image: Image, folder: Path, series: str = "1.2.826.0.1.3680043.2.1125.1.1",
                       description: str = "test series") -> list[Path]:
    """Write an image as a DICOM series, one file a slice with its position and orientation; returns the files."""
    import SimpleITK as sitk

    volume = sitk.Cast(sitk.GetImageFromArray(image.array.astype(np.int16)), sitk.sitkInt16)
    volume.SetSpacing(image.spacing)
    volume.SetOrigin(image.origin)
    volume.SetDirection(tuple(image.direction.ravel()))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(volume.GetDepth()):
        slice_image = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0020|000e": series, "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0008|0060": "MR", "0020|0013": str(k + 1), "0008|103e": description,
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": "\\".join(f"{v:.8f}" for v in (*image.direction[:, 0], *image.direction[:, 1])),
            "0018|0050": str(image.spacing[2]),
            "0008|0018": f"{series}.{k + 1}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        files.append(folder / f"{series[-6:]}-slice{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(slice_image)
    return files


def one_error_line(capsys, code: int, expected_code: int, words: str = "") -> str:
    """The command's stderr, checked to be one `meddl: error:` line (with `words`), no traceback, and the exit
    code expected."""
    err = capsys.readouterr().err
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("meddl: error:"), err
    assert "Traceback" not in err and "unexpected error" not in err
    assert words in lines[0], lines[0]
    return lines[0]
