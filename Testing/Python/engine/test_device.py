"""Device choice: every command takes auto, cpu, cuda and mps; an Apple GPU says that missing operations run on
the CPU; a device that is not there is a clear error."""

from __future__ import annotations

import pytest
from meddl import device
from meddl.cli.parser import build_parser
from meddl.device import DEVICE_CHOICES, select_compute
from meddl.errors import DeviceError


def test_mps_is_chosen_when_present_and_says_what_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(device, "_mps_available", lambda: True)
    monkeypatch.setattr(device, "_said", set())
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert select_compute("mps").device.type == "mps"
    assert select_compute("auto").device.type == "mps"  # CUDA first, then MPS, then the CPU
    assert capsys.readouterr().err.count("operations it lacks run on the CPU") == 1  # said once per process


def test_mps_where_there_is_none_is_a_device_error(monkeypatch):
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS was requested but is not available"):
        select_compute("mps")


@pytest.mark.parametrize("command", ["segment IN OUT", "classify IN --model M --csv C", "enhance IN OUT --task denoise",
                                     "register F M --out-transform T", "train --images I --labels L --label-names 1:A "
                                     "--out O", "train-classifier --csv C --out O", "train-registration --images I "
                                     "--out O"])
def test_every_command_takes_every_device(command):
    for choice in DEVICE_CHOICES:
        assert build_parser().parse_args([*command.split(), "--device", choice]).device == choice
