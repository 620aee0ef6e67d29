"""A network that raises, or returns the wrong channels, grid, dimensions or type, is one ModelError line (exit 4)
for every task that runs a model; running out of memory is a DeviceError that says so (exit 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from meddl.cli import main
from meddl.errors import DeviceError, ModelError
from meddl.image import Image
from meddl.io import write_image
from meddl.models.card import card_from_dict
from meddl.models.loaded import LoadedModel, is_out_of_memory
from meddl.models.loading import load_model
from meddl.registration.learned import learned_register
from meddl.registration.optimise import RegistrationSettings
from meddl.segmentation.predict import segment
from meddl_testing import blob_image, card_dict, one_error_line


class Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the weights do not fit this input")


class TooManyChannels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 5, 1, 1, 1)


class HalfGrid(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 2, 1, 1, 1)[:, :, ::2]


class HalfGridOneChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2]


class FourDims(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 2, 1, 1, 1)[:, :, 0]


class TwoOutputs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class Flat(torch.nn.Module):
    """A classifier's (batch, classes) logits where a volume is expected."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2]


BROKEN = {"raises": (Raises, "failed on this input: RuntimeError: the weights do not fit this input"),
          "channels": (TooManyChannels, "produced 5 output channel(s) but would need"),
          "grid": (HalfGrid, "returned an output of shape"),
          "dims": (FourDims, "returned an output of shape"),
          "tuple": (TwoOutputs, "returned tuple, not a tensor"),
          "flat": (Flat, "returned an output of shape")}


def _torchscript(network: torch.nn.Module, path: Path, card: dict) -> Path:
    torch.jit.script(network).save(str(path))
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


@pytest.fixture
def input_path(tmp_path: Path) -> Path:
    return write_image(blob_image(shape=(12, 12, 12), spacing=(1.0, 1.0, 1.0)), tmp_path / "input.nii.gz")


@pytest.mark.parametrize("broken", list(BROKEN))
def test_segment(tmp_path, input_path, capsys, broken):
    network, words = BROKEN[broken]
    model = _torchscript(network(), tmp_path / "model.ts", card_dict())
    code = main(["segment", str(input_path), str(tmp_path / "labels.nii.gz"), "--model", str(model),
                 "--device", "cpu", "--progress", "none"])
    line = one_error_line(capsys, code, 4, words)
    assert "'test-unet'" in line
    assert not (tmp_path / "labels.nii.gz").exists()


@pytest.mark.parametrize(("network", "words"), [
    (Raises, BROKEN["raises"][1]),
    (TooManyChannels, "produced 5 output channel(s) but would need 1"),  # the card's one input channel
    (HalfGridOneChannel, "returned an output of shape"),
    (TwoOutputs, "returned tuple, not a tensor"),
])
def test_enhance_with_a_model(tmp_path, input_path, capsys, network, words):
    card = {"name": "denoiser", "task": "enhancement", "license": "MIT",
            "input": {"channels": 1, "intensity": {"method": "zscore"}},
            "inference": {"roi_size": [8, 8, 8], "overlap": 0.25, "sw_batch_size": 2},
            "enhancement": {"kind": "denoise"}}
    model = _torchscript(network(), tmp_path / "denoiser.ts", card)
    code = main(["enhance", str(input_path), str(tmp_path / "out.nii.gz"), "--task", "denoise", "--model", str(model),
                 "--device", "cpu", "--progress", "none"])
    one_error_line(capsys, code, 4, words)


def _classifier_card() -> dict:
    card = card_dict(task="classification")
    card["labels"] = [{"value": 0, "name": "normal"}, {"value": 1, "name": "lesion"}]
    card["input"] = {"channels": 1, "spatial_dims": 3, "size": [12, 12, 12], "intensity": {"method": "zscore"}}
    return card


@pytest.mark.parametrize(("broken", "words"), [("raises", "failed on this input"), ("tuple", "not a tensor"),
                                               ("channels", "but its card lists 2 classes")])
def test_classify(tmp_path, input_path, capsys, broken, words):
    model = _torchscript(BROKEN[broken][0](), tmp_path / "classifier.ts", _classifier_card())
    code = main(["classify", str(input_path), "--model", str(model), "--csv", str(tmp_path / "out.csv"),
                 "--device", "cpu", "--progress", "none"])
    one_error_line(capsys, code, 4, words)


class RegistrationRaises(torch.nn.Module):
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("no deformation today")


class RegistrationOneOutput(torch.nn.Module):
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return moving


class RegistrationWrongField(torch.nn.Module):
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return moving, moving.repeat(1, 2, 1, 1, 1)  # a 2-channel field in 3D


@pytest.mark.parametrize(("network", "words"), [
    (RegistrationRaises, "failed on this input: RuntimeError: no deformation today"),
    (RegistrationOneOutput, "returned Tensor, not (moved image, displacement)"),
    (RegistrationWrongField, "produced 2 output channel(s) but would need 3"),
])
def test_register_with_a_model(tmp_path, network, words):
    """Through the engine call `meddl register --model` makes (the command line's affine stage alone takes
    seconds; its ModelError becomes exit 4 like every other command's)."""
    k, j, i = np.meshgrid(*(np.arange(12.0),) * 3, indexing="ij")
    fixed = Image(np.exp(-((k - 6) ** 2 + (j - 6) ** 2 + (i - 6) ** 2) / 10.0).astype(np.float32))
    moving = fixed.with_array(np.roll(fixed.array, 1, axis=2))
    card = {"name": "registrar", "task": "registration", "license": "MIT",
            "input": {"channels": 1, "intensity": {"method": "none"}}}
    model = load_model(_torchscript(network(), tmp_path / "registrar.ts", card))
    with pytest.raises(ModelError, match=re.escape(words)) as raised:
        learned_register(fixed, moving, model, settings=RegistrationSettings(affine_iterations=1, device="cpu"))
    assert "'registrar'" in str(raised.value) and "\n" not in str(raised.value)


class OutOfMemory(torch.nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes."),
    RuntimeError("MPS backend out of memory (MPS allocated: 9.00 GB)"),
    MemoryError(),
])
def test_out_of_memory_is_a_device_error_not_a_broken_model(error):
    model = LoadedModel(card_from_dict(card_dict()), {"network": OutOfMemory(error)})
    with pytest.raises(DeviceError, match="out of memory running model 'test-unet'") as raised:
        segment(blob_image(shape=(12, 12, 12)), model, device="cpu")
    assert "failed on this input" not in str(raised.value)
    assert is_out_of_memory(error)


def test_a_localiser_cascade_that_raises_is_a_model_error():
    card = card_from_dict({**card_dict(), "output": {"mode": "threshold", "activation": "none", "threshold": 0.5}})
    pipeline = {"type": "localiser-cascade", "localiser_shape": [8, 8, 8], "segmenter_shape": [8, 8, 8]}
    model = LoadedModel(card, {"localiser": Raises(), "segmenter": Raises()}, pipeline)
    with pytest.raises(ModelError, match="model 'test-unet' failed on this input"):
        segment(blob_image(shape=(12, 12, 12)), model, device="cpu")


def test_a_working_model_still_runs(tmp_path, input_path, capsys):
    """The checks refuse only what is wrong: an identity-like network of the right shape segments."""

    class Logits(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([-x, x], dim=1)

    model = _torchscript(Logits(), tmp_path / "model.ts", card_dict())
    assert main(["segment", str(input_path), str(tmp_path / "labels.nii.gz"), "--model", str(model),
                 "--device", "cpu", "--progress", "none"]) == 0
