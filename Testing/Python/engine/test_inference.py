"""Segmentation inference: equal to a direct MONAI call, one label per card entry, exact output grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from meddl.errors import InputError, ModelError
from meddl.image import Image
from meddl.inference.sliding_window import window_count
from meddl.models.card import card_from_dict
from meddl.models.loading import LoadedModel, load_model
from meddl.segmentation.predict import segment
from meddl_testing import blob_image, card_dict, tiny_unet, write_state_dict_model
from monai.inferers import sliding_window_inference


def _loaded(labels: int = 1, **overrides) -> LoadedModel:
    card = card_from_dict(card_dict(labels, **overrides))
    return LoadedModel(card, {"network": tiny_unet(out_channels=card.out_channels)})


def test_equals_direct_monai_sliding_window():
    image = blob_image()
    result = segment(image, _loaded(), device="cpu")
    # the same preprocessing by hand, then MONAI's inferer called directly on the tensor
    volume = torch.from_numpy(image.array.transpose(2, 1, 0).copy())[None, None]
    volume = (volume - volume.mean()) / volume.std()
    with torch.no_grad():
        logits = sliding_window_inference(volume, (16, 16, 16), 2, tiny_unet(), overlap=0.25)
    expected = torch.argmax(logits[0], 0).numpy().transpose(2, 1, 0)
    np.testing.assert_array_equal(result.labels.array, expected)
    assert result.labels.same_grid(image)


def test_multi_label_model_gives_each_label():
    image = blob_image()
    result = segment(image, _loaded(labels=3), device="cpu")
    assert [label.name for label in result.card.labels] == ["Label 1", "Label 2", "Label 3"]
    assert set(np.unique(result.labels.array)) <= {0, 1, 2, 3}
    assert result.labels.array.dtype == np.uint8 and result.labels.same_grid(image)


def test_threshold_mode_maps_channels_to_label_values():
    card = card_dict(labels=2, output={"mode": "threshold", "activation": "sigmoid", "threshold": 0.5})
    card["labels"] = [{"value": 3, "name": "three"}, {"value": 7, "name": "seven"}]
    model = LoadedModel(card_from_dict(card), {"network": tiny_unet(out_channels=2)})
    labels = segment(blob_image(), model, device="cpu").labels.array
    assert set(np.unique(labels)) <= {0, 3, 7}


def test_resampling_to_model_spacing_returns_input_grid():
    image = blob_image(spacing=(0.6, 0.8, 1.7))
    model = _loaded(input={"channels": 1, "spacing": [1.5, 1.5, 1.5], "intensity": {"method": "zscore"}})
    result = segment(image, model, device="cpu")
    assert result.labels.same_grid(image)


def test_ras_orientation_result_is_on_input_grid():
    image = blob_image()
    model = _loaded(input={"channels": 1, "orientation": "RAS", "intensity": {"method": "zscore"}})
    assert segment(image, model, device="cpu").labels.same_grid(image)


def test_partial_nan_is_tolerated():
    image = blob_image()
    array = image.array.copy()
    array[0, 0, :5] = np.nan
    result = segment(image.with_array(array), _loaded(), device="cpu")
    assert result.labels.same_grid(image)


def test_postprocessing_keeps_largest_component():
    model = _loaded(output={"mode": "argmax", "largest_component": True, "fill_holes": True})
    labels = segment(blob_image(), model, device="cpu").labels.array
    from scipy import ndimage

    for value in np.unique(labels[labels > 0]):
        assert ndimage.label(labels == value, structure=np.ones((3, 3, 3)))[1] == 1


def test_wrong_channel_count_is_refused():
    image = Image(np.zeros((16, 16, 16, 2), np.float32))
    with pytest.raises(InputError, match="2 channel.*expects 1"):
        segment(image, _loaded(), device="cpu")


def test_output_channels_disagreeing_with_card():
    card = card_from_dict(card_dict(labels=3))
    model = LoadedModel(card, {"network": tiny_unet(out_channels=2)})
    with pytest.raises(ModelError, match="produced 2 output channel.*need 4"):
        segment(blob_image(), model, device="cpu")


def test_input_is_not_modified():
    image = blob_image()
    before = image.array.copy()
    segment(image, _loaded(input={"channels": 1, "orientation": "RAS", "intensity": {"method": "zscore"}}),
            device="cpu")
    np.testing.assert_array_equal(image.array, before)


def test_progress_reaches_one_and_is_monotonic():
    reports = []
    segment(blob_image(), _loaded(), device="cpu", progress=lambda f, m: reports.append(f))
    assert reports[-1] == 1.0 and all(b >= a for a, b in zip(reports, reports[1:]))
    assert len(reports) > 5


def test_window_count_matches_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape, roi, overlap in [((24, 20, 28), (16, 16, 16), 0.25), ((100, 90, 30), (32, 32, 32), 0.5)]:
        interval = _get_scan_interval(shape, roi, 3, (overlap,) * 3)
        assert window_count(shape, roi, overlap) == len(dense_patch_slices(shape, roi, interval))


def test_model_file_round_trip(tmp_path):
    path = write_state_dict_model(tmp_path, labels=2)
    from_file = segment(blob_image(), str(path), device="cpu").labels.array
    in_memory = segment(blob_image(), _loaded(labels=2), device="cpu").labels.array
    np.testing.assert_array_equal(from_file, in_memory)
    assert json.loads((tmp_path / "model.json").read_text())["labels"][1]["name"] == "Label 2"
    assert load_model(path).card.out_channels == 3


def test_channel_argmax_equals_torch_argmax_including_ties():
    from meddl.segmentation.segmenters import channel_argmax

    logits = torch.randint(0, 3, (4, 9, 8, 7)).float()  # many ties
    assert torch.equal(channel_argmax(logits), torch.argmax(logits, dim=0).to(torch.uint8))


def test_output_stays_on_the_gpu_only_while_it_fits():
    from meddl.device import Compute
    from meddl.inference.sliding_window import output_device

    class FakeGpu(Compute):
        def free_memory_bytes(self):
            return 1_000_000_000  # 1 GB free

    gpu = FakeGpu(torch.device("cuda"), amp=True)
    assert output_device(gpu, 10_000_000, 2).type == "cuda"  # 160 MB of output and counts: fits
    assert output_device(gpu, 200_000_000, 4).type == "cpu"  # 6.4 GB: aggregate on the CPU
    assert output_device(Compute(torch.device("cpu"), False), 200_000_000, 4).type == "cpu"
