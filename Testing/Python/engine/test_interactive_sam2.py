"""MedDL's SAM 2 session: the package's own video predictor, driven directly on the same frames and prompts, gives
the same labels after every interaction (and after undo); physical prompts land on the right slice and voxels of
oblique, anisotropic grids along each axis; bad models and prompts are refused."""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from meddl.errors import InputError, ModelError
from meddl.image import Image
from meddl_testing import oblique_direction

sam2_video_predictor = pytest.importorskip("sam2.sam2_video_predictor")
import sam2_models  # noqa: E402  (needs sam2)
from meddl.interactive import Prompt, family_of  # noqa: E402
from meddl.interactive.sam2 import Sam2Session, is_sam2_model  # noqa: E402

SHAPE = (8, 40, 48)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return sam2_models.build(tmp_path_factory.mktemp("sam2") / "model", seed=0)


def _volume(shape: tuple[int, int, int]) -> np.ndarray:
    array = np.random.default_rng(0).normal(100, 20, size=shape).astype(np.float32)
    k, j, i = shape
    array[:, j // 4: 3 * j // 4, i // 4: 3 * i // 4] += 80  # a bright bar through all slices
    return array


def _frames(array: np.ndarray, size: int) -> torch.Tensor:
    """The frames as sam2's loader makes them from pictures: [0, 1] (here the 0.5-99.5 percentile window),
    square, three channels, ImageNet-normalised."""
    low, high = np.percentile(array, [0.5, 99.5])
    scaled = np.clip((array - np.float32(low)) / np.float32(high - low), 0, 1).astype(np.float32)
    frames = torch.stack([F.interpolate(torch.from_numpy(s)[None, None], size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=True)[0, 0] for s in scaled])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (frames[:, None].expand(-1, 3, -1, -1) - mean) / std


def _reference(model_folder: Path, array: np.ndarray, monkeypatch):
    """The package's predictor built by its own builder, and its own init_state on the frames."""
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        sam2_models.CONFIG, ckpt_path=str(model_folder / "checkpoint.pt"), device="cpu",
        hydra_overrides_extra=sam2_models.overrides() + ["++model.add_all_frames_to_correct_as_cond=true"])
    frames = _frames(array, predictor.image_size)
    monkeypatch.setattr(sam2_video_predictor, "load_video_frames", lambda **_: (frames, *array.shape[1:]))
    return predictor, predictor.init_state(video_path="in memory")


def _propagate(predictor, state, shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for reverse in (False, True):
        for frame, _, masks in predictor.propagate_in_video(state, reverse=reverse):
            labels[frame] = (masks[0, 0] > 0).numpy()
    return labels


def test_scripted_interactions_equal_the_package_predictor(model_folder: Path, monkeypatch, capsys) -> None:
    """Point+ on slice 3, a box on slice 3 (with that point), point- on slice 5 (a propagated slice): identical
    labels after each step; undo gives the previous step's labels, from a snapshot or a replay (identity grid:
    LPS millimetres are (i, j, k))."""
    torch.set_num_threads(1)
    array = _volume(SHAPE)
    ours = Sam2Session(model_folder)
    assert ours.license == "Apache-2.0 (random test weights)" and "Full licence text" in ours.license_text
    ours.set_image(Image(array))
    predictor, state = _reference(model_folder, array, monkeypatch)
    steps = [
        (lambda: ours.add_point((24, 20, 3), space="LPS"),
         lambda: predictor.add_new_points_or_box(state, 3, 1, points=[[24, 20]], labels=[1])),
        (lambda: ours.add_box((12, 10, 3), (35, 29, 3), space="LPS"),
         lambda: predictor.add_new_points_or_box(state, 3, 1, box=[12, 10, 35, 29], points=[[24, 20]],
                                                 labels=[1], clear_old_points=True)),
        (lambda: ours.add_point((30, 25, 5), positive=False, space="LPS"),
         lambda: predictor.add_new_points_or_box(state, 5, 1, points=[[30, 25]], labels=[0],
                                                 clear_old_points=False)),
    ]
    rng = torch.random.get_rng_state()
    after = []
    for number, (mine, package) in enumerate(steps):
        result = mine()
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # without sam2's compiled extension it warns on every frame
            package()
            theirs = _propagate(predictor, state, SHAPE)
        assert result.seconds > 0 and result.labels.same_grid(Image(array))
        agreement = float(np.mean(result.labels.array == theirs))
        assert agreement >= 0.99 and np.array_equal(result.labels.array, theirs), (number, agreement)
        assert 0 < theirs.sum() < theirs.size  # the random network segments something, not everything
        after.append(theirs)
    assert not np.array_equal(after[1], after[2])  # the negative point changed the result
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == 1
    assert ours.undo() and np.array_equal(ours.labels().array, after[1])
    ours._undo.clear()  # older states are gone: undo replays the prompts left
    assert ours.undo() and np.array_equal(ours.labels().array, after[0])
    assert ours.undo() and not ours.undo() and not ours.labels().array.any()
    assert capsys.readouterr() == ("", "")  # progress bars and prints go to the log


class _Echo:
    """Stands in for the predictor: each slice's label map is the prompts given on it (positive points set,
    boxes filled, seed masks copied), so labels show where prompts landed."""

    image_size = 64
    device = torch.device("cpu")

    def _mask(self, state: dict, frame: int) -> np.ndarray:
        shape = (state["video_height"], state["video_width"])
        return state.setdefault("echo", {}).setdefault(frame, np.zeros(shape, bool))

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, clear_old_points=True,
                              box=None):
        mask = self._mask(state, frame_idx)
        if box is not None:
            x0, y0, x1, y1 = box
            mask[y0: y1 + 1, x0: x1 + 1] = True
        for (x, y), label in zip(points or [], labels or []):
            mask[y, x] = bool(label)

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self._mask(state, frame_idx)[:] = mask.numpy()

    def propagate_in_video(self, state, reverse=False):
        frames = range(state["num_frames"])
        for frame in reversed(frames) if reverse else frames:
            yield frame, [1], torch.from_numpy(self._mask(state, frame))[None, None].float() * 2 - 1


def _ras(image: Image, kji: tuple[int, int, int], jitter: np.ndarray) -> np.ndarray:
    """The RAS position of voxel (k, j, i) moved by `jitter` voxels (under half a voxel per axis)."""
    return (image.index_to_ras() @ np.array([kji[2] + jitter[0], kji[1] + jitter[1], kji[0] + jitter[2], 1.0]))[:3]


def test_physical_prompts_land_on_their_slices_and_voxels(model_folder: Path) -> None:
    image = Image(_volume((12, 14, 16)), spacing=(0.7, 1.3, 2.5), origin=(10.0, -20.0, 5.0),
                  direction=oblique_direction(0.3))
    session = Sam2Session(model_folder)
    session._predictor = _Echo()
    session.set_image(image)
    jitter = np.array([0.3, -0.4, 0.2])
    labels = session.add_point(_ras(image, (7, 9, 5), jitter)).labels.array
    assert [tuple(v) for v in np.argwhere(labels)] == [(7, 9, 5)]  # a lone point: slices across k
    with pytest.raises(InputError, match="one axis per session"):  # a box on a slice across j
        session.add_box(_ras(image, (2, 4, 3), jitter), _ras(image, (8, 4, 10), -jitter))
    for axis, low, high, point in [(0, (7, 2, 3), (7, 10, 12), (7, 11, 13)), (1, (2, 4, 3), (8, 4, 10), (9, 4, 1)),
                                   (2, (1, 2, 6), (10, 12, 6), (3, 13, 6))]:
        session.reset()
        expected = np.zeros(image.shape, bool)
        expected[tuple(slice(a, b + 1) for a, b in zip(low, high))] = True
        labels = session.add_box(_ras(image, low, jitter), _ras(image, high, -jitter)).labels.array
        assert np.array_equal(labels.astype(bool), expected), axis
        expected[point] = True
        labels = session.add_point(_ras(image, point, -jitter)).labels.array  # on the box's axis
        assert np.array_equal(labels.astype(bool), expected), axis
    seed = np.zeros(image.shape, np.uint8)
    seed[2:6, 3:9, 11] = 1  # on one slice across i
    assert np.array_equal(session.seed_with(image.with_array(seed)).labels.array, seed)
    session.add_point(_ras(image, (0, 0, 11), jitter))  # a lone point takes the seed's axis
    assert session.labels().array[0, 0, 11] == 1 and session.labels().array.sum() == seed.sum() + 1


class Gadget:
    """An object a pickle can only rebuild by importing code."""


def _copy(model_folder: Path, to: Path) -> Path:
    return Path(shutil.copytree(model_folder, to))


def test_models_load_offline_and_bad_models_are_refused(model_folder: Path, tmp_path: Path) -> None:
    assert is_sam2_model(model_folder) and family_of(model_folder) == "SAM 2"
    single = sam2_models.build_file(tmp_path / "single" / "tiny.pt", model_folder / "checkpoint.pt")
    assert is_sam2_model(single) and not is_sam2_model(tmp_path / "missing.pt")
    session = Sam2Session(single)
    assert session.image_size == sam2_models.IMAGE_SIZE and session.license.startswith("unknown")
    with pytest.raises(ModelError, match="does not exist"):
        Sam2Session(tmp_path / "missing")
    foreign = _copy(model_folder, tmp_path / "foreign")
    config = yaml.safe_load((foreign / "config.yaml").read_text())
    config["overrides"].append("++model.image_encoder._target_=os.system")
    (foreign / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match="names code or files outside sam2"):
        Sam2Session(foreign)
    (foreign / "config.yaml").write_text(yaml.safe_dump({"sam2_config": "../../setup.py"}))
    with pytest.raises(ModelError, match="not one of the sam2 package's configurations"):
        Sam2Session(foreign)
    untrusted = _copy(model_folder, tmp_path / "untrusted")
    weights = torch.load(untrusted / "checkpoint.pt", weights_only=True)
    torch.save({**weights, "extra": Gadget()}, untrusted / "checkpoint.pt")
    with pytest.raises(ModelError, match="trust-model"):
        Sam2Session(untrusted)
    weights["model"].pop("no_obj_ptr")
    torch.save(weights, untrusted / "checkpoint.pt")
    with pytest.raises(ModelError, match="do not fit .*no_obj_ptr"):
        Sam2Session(untrusted)


def test_bad_prompts_are_refused(model_folder: Path) -> None:
    session = Sam2Session(model_folder)
    session._predictor = _Echo()
    with pytest.raises(InputError, match="set_image"):
        session.add_point((0, 0, 0))
    session.set_image(Image(_volume((8, 9, 10)), spacing=(2, 2, 2)))
    with pytest.raises(InputError, match="outside the image"):
        session.add_point((5.0, 0.0, 0.0))  # RAS: LPS (-5, 0, 0) is i = -2.5 on a 2 mm grid
    with pytest.raises(InputError, match="take point, box prompts, not a scribble"):
        session.apply(Prompt("scribble", ((0, 0, 0), (-4, 0, 0))))
    with pytest.raises(InputError, match="boxes are positive"):
        session.add_box((0, 0, 0), (-4, -4, 0), positive=False)
    with pytest.raises(InputError, match="one slice"):
        session.add_box((0, 0, 0), (-4, -4, 4))
    with pytest.raises(InputError, match="shape"):
        session.seed_with(np.zeros((3, 3, 3)))
    with pytest.raises(InputError, match="axis is 0, 1 or 2"):
        session.seed_with(np.ones((8, 9, 10)), axis=3)
    assert not session.undo()
