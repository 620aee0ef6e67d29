"""Model loading in the three native formats, the catalog, and every way a model can be wrong."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from meddl.errors import ModelError
from meddl.models import catalog
from meddl.models.card import card_from_dict, read_card
from meddl.models.loading import load_model
from meddl_testing import card_dict, tiny_unet, write_bundle, write_state_dict_model, write_torchscript_model


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_state_dict_with_card(tmp_path):
    loaded = load_model(write_state_dict_model(tmp_path))
    assert loaded.card.name == "test-unet" and [label.name for label in loaded.card.labels] == ["Label 1"]
    assert _same_output(loaded.networks["network"], tiny_unet())


def test_checkpoint_wrapped_in_dict_with_ddp_prefix(tmp_path):
    state = {f"module.{k}": v for k, v in tiny_unet().state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(card_dict()))
    assert _same_output(load_model(tmp_path / "model.pt").networks["network"], tiny_unet())


def test_torchscript_with_card(tmp_path):
    loaded = load_model(write_torchscript_model(tmp_path))
    assert isinstance(loaded.networks["network"], torch.jit.ScriptModule)
    assert _same_output(loaded.networks["network"], tiny_unet())


@pytest.mark.parametrize("torchscript", [False, True])
def test_monai_bundle(tmp_path, torchscript):
    network = write_bundle(tmp_path / "bundle", torchscript=torchscript)
    loaded = load_model(tmp_path / "bundle")
    card = loaded.card
    assert [label.name for label in card.labels] == ["grey matter", "white matter"]
    assert card.roi_size == (16, 16, 16) and card.overlap == 0.5 and card.sw_batch_size == 2
    assert card.intensity == {"method": "range", "a_min": 0, "a_max": 100, "b_min": 0, "b_max": 1, "clip": True}
    assert _same_output(loaded.networks["network"], network)


def test_bundle_with_expressions_needs_trust(tmp_path):
    write_bundle(tmp_path / "bundle", {"bundle_root": "$__import__('os').getcwd()"})
    with pytest.raises(ModelError, match="executable expressions.*trust"):
        load_model(tmp_path / "bundle")
    assert load_model(tmp_path / "bundle", trust=True).card.name == "Test bundle"


def test_pickled_module_needs_trust(tmp_path):
    torch.save(tiny_unet(), tmp_path / "model.pt")  # a whole pickled module, not a state dict
    (tmp_path / "model.json").write_text(json.dumps(card_dict()))
    with pytest.raises(ModelError, match="pickled Python objects.*trust"):
        load_model(tmp_path / "model.pt")
    assert _same_output(load_model(tmp_path / "model.pt", trust=True).networks["network"], tiny_unet())


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        load_model(tmp_path / "absent.pt")


@pytest.mark.parametrize("content", [b"", b"garbage bytes", pickle.dumps({"a": 1})[:5]])
def test_corrupt_model_file(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    (tmp_path / "model.json").write_text(json.dumps(card_dict()))
    with pytest.raises(ModelError, match="corrupt"):
        load_model(tmp_path / "model.pt")


def test_truncated_torchscript(tmp_path):
    path = write_torchscript_model(tmp_path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ModelError, match="corrupt"):
        load_model(path)


def test_weights_that_do_not_match_the_card(tmp_path):
    path = write_state_dict_model(tmp_path)
    card = card_dict()
    card["network"]["args"]["channels"] = [8, 16]
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not match the network UNet"):
        load_model(path)


def test_missing_card(tmp_path):
    torch.save(tiny_unet().state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelError, match="model card not found"):
        load_model(tmp_path / "model.pt")


@pytest.mark.parametrize("field", ["name", "task", "labels", "license"])
def test_card_missing_field_is_named(field):
    card = card_dict()
    del card[field]
    with pytest.raises(ModelError, match=f"missing required field.*{field}"):
        card_from_dict(card)


def test_card_missing_input_channels():
    card = card_dict()
    card["input"] = {}
    with pytest.raises(ModelError, match="input.channels"):
        card_from_dict(card)


def test_card_not_json(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(tmp_path / "model.json")


def test_card_network_must_be_monai(tmp_path):
    path = write_state_dict_model(tmp_path, network={"class": "os.system", "args": {}})
    with pytest.raises(ModelError, match="not a network class of monai.networks.nets"):
        load_model(path)


def test_card_colours_and_terminology():
    card = card_from_dict(card_dict(labels=2) | {"labels": [
        {"value": 1, "name": "A", "color": "#ff0000", "terminology": {"category": {}, "type": {}}},
        {"value": 2, "name": "B", "color": [0, 128, 255]}]})
    assert card.labels[0].color == (1.0, 0.0, 0.0)
    assert card.labels[1].color == pytest.approx((0.0, 128 / 255, 1.0))


def test_catalog_default_model_entry():
    assert catalog.default_model("segmentation") == "deepbet-brain-extraction"
    entry = catalog.get_entry("deepbet-brain-extraction")
    card = card_from_dict(entry["card"])
    assert card.license.startswith("MIT") and card.accuracy and card.provenance
    files = catalog.entry_files("deepbet-brain-extraction")
    assert set(files) == {"localiser", "segmenter"} and all(p.is_file() for p in files.values())
    # the weights are loaded from the installed package, not from this repository
    assert all("site-packages" in str(p) for p in files.values())


def test_catalog_entry_for_missing_package(monkeypatch):
    entry = json.loads(json.dumps(catalog.get_entry("deepbet-brain-extraction")))
    entry["source"]["python_package"] = "meddl-no-such-package"
    monkeypatch.setitem(catalog._entries(), "deepbet-brain-extraction", entry)
    with pytest.raises(ModelError, match="install it with"):
        load_model("deepbet-brain-extraction")
