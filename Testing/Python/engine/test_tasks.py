"""The task registry: every task's model enters the library, is listed under its task and runs; cards,
commands and the catalog schema all follow the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from meddl.cli import main
from meddl.cli.parser import build_parser
from meddl.cli.reporting import runners
from meddl.errors import ModelError
from meddl.io import read_image
from meddl.models.card import card_from_dict
from meddl.tasks import TASKS, get_task, require_task
from meddl_testing import card_dict, write_task_models

ROOT = Path(__file__).resolve().parents[3]


def test_every_task_declares_commands_requests_and_a_dry_run():
    commands = set(runners())
    for task in TASKS.values():
        module = task.commands_module()
        assert module.RUNNERS and set(module.RUNNERS) <= commands
        for request in module.REQUESTS:
            assert request.command in commands
        assert callable(module.add_commands)
        module_name, function = task.dry_run.split(":")
        assert callable(getattr(__import__(module_name, fromlist=[function]), function))


def test_the_parser_and_the_runners_offer_the_same_commands():
    parser = build_parser()
    choices = set(parser._subparsers._group_actions[0].choices)
    assert choices == set(runners()) | {"worker"}


def test_catalog_and_card_schemas_list_exactly_the_registered_tasks():
    schema = json.loads((ROOT / "Resources" / "Schemas" / "meddl-model-catalog.schema.json").read_text())
    assert tuple(schema["$defs"]["task"]["enum"]) == tuple(TASKS)
    card_schema = json.loads((ROOT / "MedDLExtension" / "meddl" / "models" / "card.schema.json").read_text())
    assert tuple(card_schema["$defs"]["task"]["enum"]) == tuple(TASKS)


def test_cards_follow_the_tasks_label_rules():
    with pytest.raises(ModelError, match="not one of segmentation, classification, enhancement, registration, "
                                         "promptable"):
        card_from_dict(card_dict(task="detection"))
    with pytest.raises(ModelError, match="0 is background"):
        card_from_dict({**card_dict(), "labels": [{"value": 0, "name": "Background"}]})
    classifier = card_from_dict({**card_dict(), "task": "classification",
                                 "labels": [{"value": 0, "name": "a"}, {"value": 1, "name": "b"}]})
    assert classifier.out_channels == 2
    enhancer = card_from_dict({"name": "d", "task": "enhancement", "input": {"channels": 1}, "license": "MIT"})
    assert enhancer.labels == () and enhancer.out_channels == 1
    with pytest.raises(ModelError, match="enhancement kind"):
        card_from_dict({"name": "d", "task": "enhancement", "input": {"channels": 1}, "license": "MIT",
                        "enhancement": {"kind": "deblur"}})
    with pytest.raises(ModelError, match="not one of"):
        get_task(["segmentation"])


def test_a_model_of_another_task_is_refused_in_plain_words():
    card = card_from_dict({"name": "den", "task": "enhancement", "input": {"channels": 1}, "license": "MIT"})
    with pytest.raises(ModelError, match="model 'den' is an enhancement model, not a segmentation model"):
        require_task(card, "segmentation")


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task-models")
    return {**write_task_models(folder), "folder": folder}


def _json_rows(capsys, task: str) -> list[str]:
    capsys.readouterr()
    assert main(["models", "list", "--task", task, "--json"]) == 0
    return [row["id"] for row in json.loads(capsys.readouterr().out)]


def test_a_model_of_every_task_imports_lists_under_its_task_and_runs(task_models, capsys):
    """The reported bug: `meddl models import den.pt` said 'den is a enhancement model, not a segmentation model'."""
    folder = task_models["folder"]
    for task in TASKS:
        assert main(["models", "import", str(task_models[task]), "--id", f"my-{task}"]) == 0, task
        assert f"my-{task}" in _json_rows(capsys, task), task
        others = [row for other in TASKS if other != task for row in _json_rows(capsys, other)]
        assert f"my-{task}" not in others
    image = str(folder / "noisy.nii.gz")
    assert main(["segment", image, str(folder / "seg.nii.gz"), "--model", "my-segmentation", "--progress",
                 "none"]) == 0
    assert read_image(folder / "seg.nii.gz").same_grid(read_image(image))
    assert main(["classify", image, "--model", "my-classification", "--csv", str(folder / "c.csv"), "--progress",
                 "none"]) == 0
    assert (folder / "c.csv").read_text().startswith("input,predicted")
    assert main(["enhance", image, str(folder / "den2.nii.gz"), "--task", "denoise", "--model", "my-enhancement",
                 "--progress", "none"]) == 0
    assert read_image(folder / "den2.nii.gz").same_grid(read_image(image))
    assert main(["register", str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"), "--model",
                 "my-registration", "--out-transform", str(folder / "field.nii.gz"), "--progress", "none"]) == 0
    assert (folder / "field.nii.gz").is_file()
    centre = read_image(image).index_to_ras() @ [12.0, 12.0, 10.0, 1.0]  # voxel (i, j, k), in RAS
    (folder / "click.json").write_text(json.dumps([{"kind": "point", "points": [list(centre[:3])]}]))
    assert main(["interact", image, "my-promptable", str(folder / "click.json"), str(folder / "object.nii.gz"),
                 "--progress", "none"]) == 0
    assert read_image(folder / "object.nii.gz").same_grid(read_image(image))


def test_a_library_model_of_another_task_is_refused_by_each_command(task_models, capsys):
    folder = task_models["folder"]
    assert main(["models", "import", str(task_models["enhancement"]), "--id", "den-only"]) == 0
    capsys.readouterr()
    assert main(["segment", str(folder / "noisy.nii.gz"), str(folder / "x.nii.gz"), "--model", "den-only",
                 "--progress", "none"]) == 4
    assert "is an enhancement model, not a segmentation model" in capsys.readouterr().err
    assert not (folder / "x.nii.gz").exists()


def test_importing_meddl_sets_the_mps_fallback_before_torch_loads():
    """On Apple GPUs an operation MPS lacks must run on the CPU, which PyTorch decides when it is imported."""
    import subprocess

    code = "import os, sys, meddl; print(os.environ['PYTORCH_ENABLE_MPS_FALLBACK'], 'torch' in sys.modules)"
    environment = {key: value for key, value in __import__("os").environ.items()
                   if key != "PYTORCH_ENABLE_MPS_FALLBACK"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    assert out.stdout.split() == ["1", "False"]


def _requests() -> list[type]:
    from meddl.cli import models

    return [request for module in [*(task.commands_module() for task in TASKS.values()), models]
            for request in module.REQUESTS]


REQUIRED = {"SegmentRequest": {"input": "in.nii.gz", "output": "out.nii.gz"},
            "TrainRequest": {"images": ("a.nii.gz",), "labels": ("b.nii.gz",), "label_names": "1:A", "out": "o"},
            "ClassifyRequest": {"inputs": ("a.png", "b.png"), "model": "m", "csv": "c.csv"},
            "EnhanceRequest": {"input": "in.nii.gz", "output": "out.nii.gz"},
            "RegisterRequest": {"fixed": "f.nii.gz", "moving": "m.nii.gz", "out_transform": "t.nii.gz"},
            "InstallRequest": {"model_id": "x"}, "ImportRequest": {"path": "p.pt"},
            "FillRequest": {"image": "i.nii.gz", "painted": "p.nii.gz", "output": "o.nii.gz"},
            "SegmentBatchRequest": {"batch": "cases.csv", "out": "results"},
            "InteractRequest": {"image": "i.nii.gz", "model": "m", "prompts": "p.json", "output": "o.nii.gz"}}


def test_every_request_builds_a_command_the_parser_reads_back_with_the_same_defaults():
    """A worker request and the command line cannot drift apart: same values, same defaults."""
    import dataclasses

    parser = build_parser()
    assert {request.__name__ for request in _requests()} == set(REQUIRED)
    for request_type in _requests():
        request = request_type(**REQUIRED[request_type.__name__])
        parsed = vars(parser.parse_args(request.argv()))
        assert parsed["command"] == request.command
        for field in dataclasses.fields(request_type):
            value = getattr(request, field.name)
            if field.name == "compress":
                assert parsed["no_compress"] is not value
            elif request_type.arg_names.get(field.name, field.name) in parsed:
                read = parsed[request_type.arg_names.get(field.name, field.name)]
                assert (tuple(read) if isinstance(read, list) else read) == value, (request_type.__name__, field.name)


def test_every_request_names_its_file_fields_among_its_fields():
    """A server uploads `file_inputs` and fetches `file_outputs`: they must be fields of the request."""
    import dataclasses

    for request_type in _requests():
        names = {field.name for field in dataclasses.fields(request_type)}
        assert set(request_type.file_inputs) | set(request_type.file_outputs) <= names, request_type.__name__
    assert "output" in REQUEST_TYPES["SegmentRequest"].file_outputs


REQUEST_TYPES = {request.__name__: request for request in _requests()}
