"""MedDL's nnInteractive session: the package's own session on the same voxels gives the same labels after every
interaction; physical prompts land on the right voxels of oblique, anisotropic grids; bad input is refused."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from meddl.errors import InputError, ModelError
from meddl.image import Image
from meddl_testing import oblique_direction

pytest.importorskip("nnInteractive.inference.inference_session")
import nninteractive_folders  # noqa: E402  (needs nninteractive)
from meddl.interactive import prompts  # noqa: E402
from meddl.interactive.nninteractive import InteractiveSession  # noqa: E402


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return nninteractive_folders.build(tmp_path_factory.mktemp("nninteractive") / "model")


def _volume(shape: tuple[int, int, int]) -> np.ndarray:
    array = np.random.default_rng(0).normal(100, 20, size=shape).astype(np.float32)
    k, j, i = shape
    array[k // 4: 3 * k // 4, j // 4: 3 * j // 4, i // 4: 3 * i // 4] += 80  # a bright block
    return array


def _reference(model_folder: Path):
    from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

    with contextlib.redirect_stdout(io.StringIO()):
        session = nnInteractiveInferenceSession(device=torch.device("cpu"), torch_n_threads=1, verbose=False)
        session.initialize_from_trained_model_folder(str(model_folder))
    return session


def test_scripted_interactions_equal_the_package_session(model_folder: Path, capsys) -> None:
    """Point+, 2D box, scribble, point-: identical labels after each step, then undo, seed and reset (identity
    grid: LPS millimetres are (i, j, k))."""
    torch.set_num_threads(1)
    array = _volume((40, 56, 48))
    ours = InteractiveSession(model_folder)
    assert ours.license == "Apache-2.0 (random test weights)" and "Full licence text" in ours.license_text
    ours.set_image(Image(array))
    theirs = _reference(model_folder)
    target = np.zeros(array.shape, np.uint8)
    with contextlib.redirect_stdout(io.StringIO()):  # its set_image prints from a worker thread: wait for it
        theirs.set_image(array[None].copy())
        theirs.set_target_buffer(target)
        theirs._finish_preprocessing_and_initialize_interactions()
    np.random.seed(0)  # the stream MedDL's session keeps for itself (seed 0)
    line = np.ones((1, 1, 13), np.uint8)
    steps = [
        (lambda: ours.add_point((24, 28, 20), space="LPS"),
         lambda: theirs.add_point_interaction((20, 28, 24), include_interaction=True)),
        (lambda: ours.add_box((12, 14, 20), (35, 41, 20), space="LPS"),
         lambda: theirs.add_bbox_interaction([[20, 21], [14, 42], [12, 36]], include_interaction=True)),
        (lambda: ours.add_scribble([(18, 28, 20), (30, 28, 20)], space="LPS", width=1),
         lambda: theirs.add_scribble_interaction(line, include_interaction=True,
                                                 interaction_bbox=[[20, 21], [28, 29], [18, 31]])),
        (lambda: ours.add_point((13, 15, 11), positive=False, space="LPS"),
         lambda: theirs.add_point_interaction((11, 15, 13), include_interaction=False)),
    ]
    for number, (mine, package) in enumerate(steps):
        result = mine()
        with contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(0)
            package()
        assert result.seconds > 0 and result.labels.same_grid(Image(array))
        agreement = float(np.mean(result.labels.array == target))
        assert agreement >= 0.99 and np.array_equal(result.labels.array, target), (number, agreement)
        assert 0 < target.sum() < target.size  # the random network segments something, not everything
    assert ours.undo() and theirs.undo() and np.array_equal(ours.labels().array, target)
    seed = np.zeros(array.shape, np.uint8)
    seed[10:20, 10:20, 10:20] = 1
    ours.seed_with(Image(seed))
    assert np.array_equal(ours.labels().array, seed)
    ours.reset()
    assert not ours.labels().array.any()
    assert torch.get_num_threads() == 1
    assert capsys.readouterr().out == ""  # the package's chatter goes to the log


class _Echo(torch.nn.Module):
    """Foreground where the positive point channel peaks (the point's centre) or a positive box or scribble
    channel is set: the prompts as the network sees them."""

    def __init__(self, mapping: dict) -> None:
        super().__init__()
        self.point, self.others = 1 + mapping["points"][0], [1 + mapping["bbox2d"][0], 1 + mapping["scribble"][0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        point = x[:, self.point]
        foreground = (point > 0) & (point >= point.amax() * 0.999)
        for channel in self.others:
            foreground |= x[:, channel] > 0
        return torch.stack([(~foreground).float(), foreground.float()], 1)


def _ras(image: Image, kji: tuple[int, int, int], jitter: np.ndarray) -> np.ndarray:
    """The RAS position of voxel (k, j, i) moved by `jitter` voxels (under half a voxel per axis)."""
    return (image.index_to_ras() @ np.array([kji[2] + jitter[0], kji[1] + jitter[1], kji[0] + jitter[2], 1.0]))[:3]


def test_physical_prompts_land_on_their_voxels(model_folder: Path) -> None:
    array = _volume((20, 28, 24))
    image = Image(array, spacing=(0.7, 1.3, 2.5), origin=(10.0, -20.0, 5.0), direction=oblique_direction(0.3))
    session = InteractiveSession(model_folder)
    session._session.network = _Echo(session._session.channel_mapping)
    session.set_image(image)
    jitter = np.array([0.3, -0.4, 0.2])
    labels = session.add_point(_ras(image, (7, 15, 9), jitter)).labels.array
    assert [tuple(v) for v in np.argwhere(labels)] == [(7, 15, 9)]
    expected = np.zeros(array.shape, bool)
    expected[7, 15, 9] = True
    expected[5, 4:21, 3:19] = True
    labels = session.add_box(_ras(image, (5, 4, 3), jitter), _ras(image, (5, 20, 18), -jitter)).labels.array
    assert np.array_equal(labels.astype(bool), expected)
    expected[12, 10, 5:16] = True
    scribble = [_ras(image, (12, 10, 5), jitter), _ras(image, (12, 10, 15), -jitter)]
    labels = session.add_scribble(scribble, width=1).labels.array
    assert np.array_equal(labels.astype(bool), expected)
    lps = image.index_to_lps() @ np.array([9, 15, 7, 1.0])
    assert prompts.point_voxel(image, lps[:3], space="LPS") == (7, 15, 9)


def test_scribble_is_thickened_within_its_slice() -> None:
    image = Image(np.ones((10, 12, 14), np.float32))
    mask, box = prompts.scribble_voxels(image, [(2, 3, 4), (8, 6, 4)], space="LPS", width=3)
    assert box == [[4, 5], [2, 8], [1, 10]]  # k stays on slice 4; j and i grow by one voxel either side
    full = np.zeros(image.shape, np.uint8)
    full[tuple(slice(a, b) for a, b in box)] = mask
    for i in range(2, 9):  # the line from (i, j) = (2, 3) to (8, 6) is covered, one voxel either side
        j = int(np.floor(3 + (i - 2) * 0.5 + 0.5))
        assert full[4, j - 1: j + 2, i - 1: i + 2].all()


class Gadget:
    """An object a pickle can only rebuild by importing code."""


def test_bad_input_is_refused(model_folder: Path, tmp_path: Path) -> None:
    session = InteractiveSession(model_folder)
    with pytest.raises(InputError, match="set_image"):
        session.add_point((0, 0, 0))
    session.set_image(Image(_volume((8, 9, 10)), spacing=(2, 2, 2)))
    with pytest.raises(InputError, match="outside the image"):
        session.add_point((5.0, 0.0, 0.0))  # RAS: LPS (-5, 0, 0) is i = -2.5 on a 2 mm grid
    with pytest.raises(InputError, match="outside the image"):
        session.add_box((0, 0, 0), (-100, 0, 0))  # LPS x = 100 mm is i = 50 of 10
    with pytest.raises(InputError, match="shape"):
        session.seed_with(np.zeros((3, 3, 3)))
    with pytest.raises(ModelError, match="does not exist"):
        InteractiveSession(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="plans.json"):
        InteractiveSession(tmp_path / "empty")
    untrusted = Path(shutil.copytree(model_folder, tmp_path / "untrusted"))
    checkpoint = untrusted / "fold_0" / "checkpoint_final.pth"
    torch.save({**torch.load(checkpoint, weights_only=True), "extra": Gadget()}, checkpoint)
    with pytest.raises(ModelError, match="could run code"):
        InteractiveSession(untrusted)
    assert InteractiveSession(untrusted, trust=True).license.startswith("Apache")
    foreign = Path(shutil.copytree(model_folder, tmp_path / "foreign"))
    plans = json.loads((foreign / "plans.json").read_text())
    architecture = plans["configurations"][nninteractive_folders.CONFIGURATION]["architecture"]
    architecture["network_class_name"] = "somewhere.Evil"
    (foreign / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="outside nnU-Net's network library"):
        InteractiveSession(foreign)
