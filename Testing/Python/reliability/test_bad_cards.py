"""Bad model cards (wrong types, values out of range, invalid JSON) and bad comma lists on the command line:
one line on stderr and exit 4 (model) or 2 (usage), never a traceback with exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from meddl.cli import main
from meddl.enhancement import KINDS
from meddl.errors import ModelError
from meddl.io import write_image
from meddl.models import catalog
from meddl.models.card import INTENSITY_METHODS, SCHEMA, card_from_dict, card_validator
from meddl.models.loading import load_model
from meddl_testing import blob_image, card_dict, one_error_line, write_bundle, write_state_dict_model


def _set(path: str, value):
    """A card mutation: set the dotted field (list items by index) to `value`."""

    def mutate(card: dict) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        target = card
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


# The defects of issue 16 (defect 7), each as (id, mutation, words the message must hold).
BAD_FIELDS = [
    ("channels-one", _set("input.channels", "one"), "input.channels must be an integer, not 'one'"),
    ("channels-zero", _set("input.channels", 0), "input.channels must be >= 1"),
    ("label-value-one", _set("labels.0.value", "one"), "labels[0].value must be an integer"),
    ("label-value-256", _set("labels.0.value", 256), "labels[0].value must be <= 255"),
    ("label-value-negative", _set("labels.0.value", -1), "labels[0].value must be >= 0"),
    ("colour-words", _set("labels.0.color", ["red", "green", "blue"]), "labels[0].color must be '#rrggbb'"),
    ("colour-name", _set("labels.0.color", "red"), "labels[0].color"),
    ("colour-bad-hex", _set("labels.0.color", "#zzzzzz"), "labels[0].color"),
    ("overlap-one", _set("inference.overlap", 1), "inference.overlap must be < 1"),
    ("overlap-negative", _set("inference.overlap", -0.25), "inference.overlap must be >= 0"),
    ("roi-string", _set("inference.roi_size", "16,16,16"), "inference.roi_size must be a list"),
    ("roi-two", _set("inference.roi_size", [16, 16]), "inference.roi_size must hold 3 values"),
    ("roi-zero", _set("inference.roi_size", [16, 0, 16]), "inference.roi_size[1] must be >= 1"),
    ("spacing-string", _set("input.spacing", "1,1,1"), "input.spacing must be a list"),
    ("spacing-zero", _set("input.spacing", [0, 1, 1]), "input.spacing[0] must be > 0"),
    ("spacing-terabytes", _set("input.spacing", [1e-4, 1e-4, 1e-4]), "more than 2147483648"),
    ("sw-batch-zero", _set("inference.sw_batch_size", 0), "inference.sw_batch_size must be >= 1"),
    ("sw-batch-text", _set("inference.sw_batch_size", "2"), "inference.sw_batch_size must be an integer"),
    ("threshold-half", _set("output", {"mode": "threshold", "threshold": "half"}),
     "output.threshold must be a number, not 'half'"),
    ("threshold-above-one", _set("output", {"mode": "threshold", "activation": "sigmoid", "threshold": 1.5}),
     "threshold must be between 0 and 1"),
    ("mode-unknown", _set("output.mode", "softmax"), "output.mode must be one of"),
    ("network-args-list", _set("network.args", [3, 1, 2]), "network.args must be an object"),
    ("network-class-number", _set("network.class", 7), "network.class must be a string"),
    ("intensity-range-without-bounds", _set("input.intensity", {"method": "range"}), "input.intensity.a_min"),
    ("intensity-params-text", _set("input.intensity", {"method": "range", "a_min": "low", "a_max": 1}),
     "input.intensity.a_min must be a number"),
    ("name-number", _set("name", 5), "name must be a string"),
    ("labels-object", _set("labels", {"1": "Liver"}), "labels must be a list"),
    ("label-without-name", _set("labels.0", {"value": 1}), "labels[0].name is required"),
    ("inference-list", _set("inference", [16, 16, 16]), "inference must be an object"),
]


@pytest.fixture
def input_path(tmp_path: Path) -> Path:
    return write_image(blob_image(shape=(12, 12, 12), spacing=(1.0, 1.0, 1.0)), tmp_path / "input.nii.gz")


def _write_card(model: Path, card) -> None:
    model.with_suffix(".json").write_text(card if isinstance(card, str) else json.dumps(card))


@pytest.mark.parametrize(("mutate", "words"), [case[1:] for case in BAD_FIELDS], ids=[case[0] for case in BAD_FIELDS])
def test_segment_with_a_bad_card_is_one_line_and_exit_4(tmp_path, input_path, capsys, mutate, words):
    model = write_state_dict_model(tmp_path)
    card = card_dict()
    mutate(card)
    _write_card(model, card)
    code = main(["segment", str(input_path), str(tmp_path / "labels.nii.gz"), "--model", str(model),
                 "--device", "cpu", "--progress", "none"])
    line = one_error_line(capsys, code, 4, words)
    assert str(model.with_suffix(".json")) in line or "expects a spacing" in line  # the card file is named
    assert not (tmp_path / "labels.nii.gz").exists()


CLASSIFIER_BAD_FIELDS = [case for case in BAD_FIELDS if case[0] in (
    "channels-one", "label-value-one", "colour-words", "network-args-list", "name-number", "labels-object")]


def _classifier_card() -> dict:
    card = card_dict(task="classification")
    card["labels"] = [{"value": 0, "name": "normal"}, {"value": 1, "name": "lesion"}]
    card["input"] = {"channels": 1, "spatial_dims": 3, "size": [12, 12, 12], "intensity": {"method": "zscore"}}
    return card


@pytest.mark.parametrize(("mutate", "words"), [case[1:] for case in CLASSIFIER_BAD_FIELDS],
                         ids=[case[0] for case in CLASSIFIER_BAD_FIELDS])
def test_classify_with_a_bad_card_is_one_line_and_exit_4(tmp_path, input_path, capsys, mutate, words):
    model = write_state_dict_model(tmp_path)
    card = _classifier_card()
    assert card_from_dict(card).task == "classification"
    mutate(card)
    _write_card(model, card)
    code = main(["classify", str(input_path), "--model", str(model), "--csv", str(tmp_path / "out.csv"),
                 "--device", "cpu", "--progress", "none"])
    one_error_line(capsys, code, 4, words)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2", b"\xff\xfe{", b'{"name": 1e999999999}', b"[]",
                                     b"42", b"[" * 100000])
@pytest.mark.parametrize("command", ["segment", "classify"])
def test_invalid_json_beside_a_checkpoint_names_the_file(tmp_path, input_path, capsys, content, command):
    model = write_state_dict_model(tmp_path)
    model.with_suffix(".json").write_bytes(content)
    outputs = [str(tmp_path / "labels.nii.gz")] if command == "segment" else ["--csv", str(tmp_path / "out.csv")]
    code = main([command, str(input_path), *outputs, "--model", str(model), "--device", "cpu", "--progress", "none"])
    line = one_error_line(capsys, code, 4)
    assert "model.json" in line


def test_importing_a_checkpoint_with_invalid_json_beside_it(tmp_path, capsys):
    model = write_state_dict_model(tmp_path)
    _write_card(model, "{not json")
    code = main(["models", "import", str(model)])
    one_error_line(capsys, code, 4, "model.json")


def test_importing_a_checkpoint_with_a_bad_card_field(tmp_path, capsys):
    model = write_state_dict_model(tmp_path)
    card = card_dict()
    card["inference"]["overlap"] = 1.5
    _write_card(model, card)
    code = main(["models", "import", str(model)])
    one_error_line(capsys, code, 4, "inference.overlap must be < 1")


def test_a_bundles_card_override_goes_through_the_schema(tmp_path):
    write_bundle(tmp_path / "bundle")
    (tmp_path / "bundle" / "configs" / "meddl_card.json").write_text(json.dumps({"inference": {"overlap": 2}}))
    with pytest.raises(ModelError, match="inference.overlap must be < 1"):
        load_model(tmp_path / "bundle")


@pytest.mark.parametrize(("command", "option", "value"), [
    ("train", "--patch-size", "a,b,c"),
    ("train", "--patch-size", "32,32"),
    ("train", "--patch-size", "32,0,32"),
    ("train-classifier", "--size", "a,b"),
    ("train-classifier", "--size", "64"),
    ("enhance", "--factor", "1000000"),
    ("enhance", "--factor", "two"),
])
def test_bad_comma_lists_are_usage_errors(tmp_path, capsys, command, option, value):
    required = {"train": ["--images", "a.nii.gz", "--labels", "b.nii.gz", "--label-names", "1:A",
                          "--out", str(tmp_path / "out")],
                "train-classifier": ["--csv", "a.csv", "--out", str(tmp_path / "out")],
                "enhance": ["a.nii.gz", "b.nii.gz", "--task", "superres"]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *required, f"{option}={value}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.splitlines()[-1].startswith(f"meddl {command}: error: argument {option}")
    assert "Traceback" not in err and value in err


def test_bad_roi_of_the_import_form_is_a_usage_error(tmp_path, capsys):
    model = write_state_dict_model(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "import", str(model), "--roi", "a,b,c"])
    assert exit_info.value.code == 2


def test_the_card_schema_is_valid_and_matches_the_code():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert card_validator().schema == schema
    assert tuple(schema["properties"]["enhancement"]["properties"]["kind"]["enum"]) == KINDS
    assert tuple(schema["$defs"]["intensity"]["properties"]["method"]["enum"]) == INTENSITY_METHODS


def test_every_catalog_card_passes_the_card_schema():
    for model_id in catalog.entry_ids():
        entry = catalog.get_entry(model_id)
        if "card" in entry:
            assert card_from_dict(entry["card"], f"catalog entry {model_id}").name


def test_cards_made_by_python_may_use_tuples():
    card = card_dict(input={"channels": 1, "spacing": (1.0, 1.0, 1.0), "intensity": {"method": "none"}})
    card["labels"][0]["color"] = (0.5, 0.5, 0.5)
    assert card_from_dict(card).spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("change", [
    {"inference": {"roi_size": [16, 16, 16], "overlap": float("nan")}},
    {"input": {"channels": 1, "spacing": [1.0, float("inf"), 1.0]}},
    {"input": {"channels": 1, "intensity": {"method": "range", "a_min": 100, "a_max": 0}}},
])
def test_non_finite_numbers_and_inverted_ranges_are_refused(change):
    from meddl.models.card import card_from_dict

    with pytest.raises(ModelError):
        card_from_dict({**card_dict(), **change})


@pytest.mark.parametrize("argv", [
    ["train", "--images", "a", "--labels", "b", "--label-names", "1:A", "--out", "o", "--batch-size", "0"],
    ["train", "--images", "a", "--labels", "b", "--label-names", "1:A", "--out", "o", "--epochs", "0"],
    ["train-classifier", "--csv", "a.csv", "--out", "o", "--validation-fraction", "1.5"],
    ["train-classifier", "--csv", "a.csv", "--out", "o", "--learning-rate", "nan"],
    ["register", "f", "m", "--out-transform", "t.nii.gz", "--smoothness", "nan"],
    ["register", "f", "m", "--out-transform", "t.nii.gz", "--iterations", "-1"],
    ["enhance", "a", "b", "--task", "denoise", "--time-budget", "nan"],
])
def test_out_of_range_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "Traceback" not in capsys.readouterr().err
