"""`meddl interact` and the promptable task: the command equals the engine session; a long-lived process runs only
the new prompt (or one undo) yet answers as a fresh replay would; promptable models enter the library under their
own task with their weights' licence; bad input gets a clear error and writes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from meddl.cli import main
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl_testing import oblique_direction

pytest.importorskip("nnInteractive.inference.inference_session")
import nninteractive_folders  # noqa: E402  (needs nninteractive)
from meddl.cli import interact  # noqa: E402
from meddl.interactive import Prompt, open_session  # noqa: E402


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return nninteractive_folders.build(tmp_path_factory.mktemp("nninteractive") / "model")


@pytest.fixture(scope="module")
def image() -> Image:
    array = np.random.default_rng(1).normal(100, 20, size=(20, 28, 24)).astype(np.float32)
    array[5:15, 7:21, 6:18] += 90
    return Image(array, spacing=(0.8, 1.1, 2.0), origin=(4.0, -7.0, 12.0), direction=oblique_direction(0.4))


def _ras(image: Image, k: float, j: float, i: float) -> list[float]:
    return [float(v) for v in (image.index_to_ras() @ np.array([i, j, k, 1.0]))[:3]]


def _prompts(image: Image) -> list[dict]:
    return [{"kind": "point", "points": [_ras(image, 10, 14, 12)]},
            {"kind": "box", "points": [_ras(image, 10, 8, 7), _ras(image, 10, 20, 17)]},
            {"kind": "point", "points": [_ras(image, 3, 3, 3)], "positive": False}]


def _write_prompts(path: Path, prompts: list[dict]) -> str:
    path.write_text(json.dumps({"prompts": prompts}))
    return str(path)


def _done(capsys) -> dict:
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return events[-1]


def test_the_command_equals_the_session_and_remembers_between_requests(tmp_path, model_folder, image, capsys):
    interact._sessions.clear()
    image_path = str(write_image(image, tmp_path / "image.nrrd"))
    prompts = _prompts(image)
    session = open_session(model_folder, device="cpu")
    session.set_image(image)
    expected = [session.apply(Prompt.from_dict(p)).labels.array for p in prompts]
    for count in (1, 2, 3):
        output = tmp_path / f"labels{count}.nii.gz"
        assert main(["interact", image_path, str(model_folder), _write_prompts(tmp_path / "p.json", prompts[:count]),
                     str(output), "--device", "cpu", "--progress", "json"]) == 0
        done = _done(capsys)
        assert done["family"] == "nnInteractive" and done["license"].startswith("Apache-2.0")
        assert len(done["seconds"]) == 1 and not done["replayed"]  # only the new prompt ran
        labels = read_image(output)
        assert labels.same_grid(image) and np.array_equal(labels.array, expected[count - 1])
    assert main(["interact", image_path, str(model_folder), _write_prompts(tmp_path / "p.json", prompts[:2]),
                 str(tmp_path / "undone.nii.gz"), "--device", "cpu", "--progress", "json"]) == 0
    done = _done(capsys)
    assert done["seconds"] == [] and not done["replayed"]  # one undo, no prompt run
    assert np.array_equal(read_image(tmp_path / "undone.nii.gz").array, expected[1])
    reordered = [prompts[1], prompts[0]]
    assert main(["interact", image_path, str(model_folder), _write_prompts(tmp_path / "p.json", reordered),
                 str(tmp_path / "replayed.nii.gz"), "--device", "cpu", "--progress", "json"]) == 0
    done = _done(capsys)
    assert done["replayed"] and len(done["seconds"]) == 2
    fresh = open_session(model_folder, device="cpu")
    fresh.set_image(image)
    for prompt in reordered:
        result = fresh.apply(Prompt.from_dict(prompt))
    assert np.array_equal(read_image(tmp_path / "replayed.nii.gz").array, result.labels.array)


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, model_folder, image, capsys):
    image_path = str(write_image(image, tmp_path / "image.nrrd"))
    output = tmp_path / "labels.nii.gz"
    cases = [
        ({"kind": "circle", "points": [[0, 0, 0]]}, "kind must be one of point, box, scribble, lasso"),
        ({"kind": "box", "points": [[0, 0, 0]]}, "box prompt takes 2 position"),
        ({"kind": "point", "points": [[1e6, 0, 0]]}, "lies outside the image"),
        ({"kind": "point", "points": [["a", 0, 0]]}, r"\[x, y, z\] in millimetres"),
    ]
    for prompt, message in cases:
        capsys.readouterr()
        assert main(["interact", image_path, str(model_folder), _write_prompts(tmp_path / "bad.json", [prompt]),
                     str(output), "--device", "cpu", "--progress", "none"]) == 3, prompt
        assert re.search(message, capsys.readouterr().err), prompt
        assert not output.exists()
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["interact", image_path, str(model_folder), str(tmp_path / "broken.json"), str(output),
                 "--progress", "none"]) == 3
    assert "not readable JSON" in capsys.readouterr().err
    prompts = _write_prompts(tmp_path / "p.json", _prompts(image)[:1])
    assert main(["interact", image_path, str(tmp_path), prompts, str(output), "--progress", "none"]) == 4
    assert "not a promptable model" in capsys.readouterr().err
    assert not output.exists()


def test_a_promptable_model_enters_the_library_under_its_task_with_its_licence(tmp_path, model_folder, image, capsys):
    assert main(["models", "import", str(model_folder), "--id", "clicks"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--task", "promptable", "--json"]) == 0
    rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["clicks"]["license"].startswith("Apache-2.0") and rows["clicks"]["task"] == "promptable"
    assert main(["models", "list", "--task", "segmentation", "--json"]) == 0
    assert "clicks" not in {row["id"] for row in json.loads(capsys.readouterr().out)}
    image_path = str(write_image(image, tmp_path / "image.nrrd"))
    prompts = _write_prompts(tmp_path / "p.json", _prompts(image)[:1])
    assert main(["interact", image_path, "clicks", prompts, str(tmp_path / "l.nii.gz"), "--progress", "none"]) == 0
    assert read_image(tmp_path / "l.nii.gz").array.any()
    capsys.readouterr()
    assert main(["segment", image_path, str(tmp_path / "s.nii.gz"), "--model", "clicks", "--progress", "none"]) == 4
    assert "promptable" in capsys.readouterr().err
    assert not (tmp_path / "s.nii.gz").exists()


def test_a_sam2_checkpoint_enters_the_library_and_runs_boxes_through_the_command(tmp_path, image, capsys):
    pytest.importorskip("sam2")
    import sam2_models

    folder = sam2_models.build(tmp_path / "sam")
    weights = sam2_models.build_file(tmp_path / "medsam" / "tiny.pt", folder / "checkpoint.pt")
    (weights.parent / "LICENSE").write_text("CC BY-NC 4.0 (as a MedSAM2-style checkpoint might say)\n")
    assert main(["models", "import", str(weights), "--id", "slices"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--task", "promptable", "--json"]) == 0
    row = {row["id"]: row for row in json.loads(capsys.readouterr().out)}["slices"]
    assert row["license"] == "CC BY-NC 4.0 (as a MedSAM2-style checkpoint might say)" and "SAM 2" in row["title"]
    image_path = str(write_image(image, tmp_path / "image.nrrd"))
    box = [{"kind": "box", "points": [_ras(image, 10, 8, 7), _ras(image, 10, 20, 17)]}]
    output = tmp_path / "object.nii.gz"
    assert main(["interact", image_path, "slices", _write_prompts(tmp_path / "p.json", box), str(output),
                 "--progress", "json"]) == 0
    assert _done(capsys)["family"] == "SAM 2" and read_image(output).same_grid(image)
    scribble = [{"kind": "scribble", "points": [_ras(image, 10, 8, 7), _ras(image, 10, 20, 17)]}]
    assert main(["interact", image_path, "slices", _write_prompts(tmp_path / "s.json", scribble),
                 str(tmp_path / "no.nii.gz"), "--progress", "none"]) == 3
    assert "SAM 2 models take point, box prompts, not a scribble" in capsys.readouterr().err
