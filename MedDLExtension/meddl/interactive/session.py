"""What every promptable model family gives MedDL: one image, prompts placed in physical space, and the label map
after each prompt.

A `Prompt` is plain data (kind, physical points, positive or negative, RAS or LPS), so the same prompts travel
as JSON from Slicer to the worker, to a server, or sit in a file for batch work. A family's session
(`PromptSession`) turns prompts into voxels with `prompts` and runs its package's own inference.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from ..errors import InputError
from ..image import Image
from .prompts import SPACES

log = logging.getLogger(__name__)

KINDS = ("point", "box", "scribble", "lasso")
POINTS_NEEDED = {"point": (1, 1), "box": (2, 2), "scribble": (1, 10000), "lasso": (3, 10000)}


@dataclass(frozen=True)
class InteractionResult:
    """The label map after an interaction (on the input image's grid) and how long the interaction took."""

    labels: Image
    seconds: float
    changed: Optional[list[list[int]]] = None  # (k, j, i) box the interaction changed, when the package says


@dataclass(frozen=True)
class Prompt:
    """One interaction: a point (one position), a box (two opposite corners; on one slice it is a 2D box), a
    scribble (a polyline) or a lasso (a closed polygon on one slice); positive adds, negative removes."""

    kind: str
    points: tuple[tuple[float, float, float], ...]
    positive: bool = True
    space: str = "RAS"
    width: Optional[int] = None  # a scribble's thickness in voxels (default: the model's preference)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"a prompt's kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.space not in SPACES:
            raise InputError(f"a prompt's space must be one of {', '.join(SPACES)}, not {self.space!r}")
        low, high = POINTS_NEEDED[self.kind]
        if not low <= len(self.points) <= high:
            wanted = str(low) if low == high else f"at least {low}"
            raise InputError(f"a {self.kind} prompt takes {wanted} position(s), not {len(self.points)}")
        if not isinstance(self.positive, bool):
            raise InputError(f"a prompt's 'positive' must be true or false, not {self.positive!r}")
        if self.width is not None and (isinstance(self.width, bool) or not isinstance(self.width, int)
                                       or not 1 <= self.width <= 50):
            raise InputError(f"a scribble's width must be a whole number of voxels from 1 to 50, not {self.width!r}")

    @classmethod
    def from_dict(cls, data: Any) -> Prompt:
        """A prompt from its JSON form; InputError saying what is wrong."""
        if not isinstance(data, dict):
            raise InputError(f"a prompt is a JSON object with kind and points, not {type(data).__name__}")
        unknown = set(data) - {"kind", "points", "positive", "space", "width"}
        if unknown:
            raise InputError(f"a prompt has unknown field(s) {', '.join(sorted(unknown))}")
        if "kind" not in data or "points" not in data:
            raise InputError("a prompt needs 'kind' and 'points'")
        return cls(str(data["kind"]), _positions(data["points"]), data.get("positive", True),
                   str(data.get("space", "RAS")), data.get("width"))

    def as_dict(self) -> dict:
        data = {"kind": self.kind, "points": [list(p) for p in self.points], "positive": self.positive,
                "space": self.space}
        return data if self.width is None else {**data, "width": self.width}


def _positions(points: Any) -> tuple[tuple[float, float, float], ...]:
    if not isinstance(points, (list, tuple)):
        raise InputError("a prompt's 'points' is a list of [x, y, z] positions in millimetres")
    positions = []
    for point in points:
        if not isinstance(point, (list, tuple)) or len(point) != 3 \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point):
            raise InputError(f"a prompt position is [x, y, z] in millimetres, not {point!r}")
        if not all(math.isfinite(v) for v in point):
            raise InputError(f"a prompt position is not finite: {point!r}")
        positions.append(tuple(float(v) for v in point))
    return tuple(positions)


def prompts_from_json(data: Any) -> list[Prompt]:
    """Prompts from `{"prompts": [...]}` or a bare list."""
    if isinstance(data, dict) and set(data) == {"prompts"}:
        data = data["prompts"]
    if not isinstance(data, list):
        raise InputError('prompts are a JSON list of prompts, or {"prompts": [...]}')
    return [Prompt.from_dict(item) for item in data]


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts in a JSON file; InputError for a missing or malformed file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"prompt file {path} is not readable JSON: {error}") from None
    return prompts_from_json(data)


def seed_mask(image: Image, labels: Image | np.ndarray) -> np.ndarray:
    """A seed label map as a uint8 object mask (nonzero = object) on `image`'s grid; InputError otherwise."""
    array = labels.array if isinstance(labels, Image) else np.asarray(labels)
    if isinstance(labels, Image) and not image.same_grid(labels):
        raise InputError("the seed label map is not on the image's grid")
    if array.shape != image.shape:
        raise InputError(f"the seed label map has shape {array.shape}, the image {image.shape}")
    return (array != 0).astype(np.uint8)


@contextlib.contextmanager
def package_quietly(package: str, threads: int, seed: int, stderr: bool = False) -> Iterator[None]:
    """Run a family's package code: torch's random stream forked and seeded with `seed` (the caller's is left as
    it was), the package's prints (and with `stderr` its progress bars) sent to the log, and torch's thread count,
    which the packages change, set back to `threads`."""
    import torch  # only families that run a package get here

    captured = io.StringIO()
    try:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(captured), \
                (contextlib.redirect_stderr(captured) if stderr else contextlib.nullcontext()):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        if captured.getvalue().strip():
            log.debug("%s: %s", package, captured.getvalue().strip())


class PromptSession(ABC):
    """A promptable model on one image. Families implement the prompt kinds they support (`kinds`)."""

    family: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]
    license: str = ""
    license_text: str = ""
    _image: Optional[Image] = None  # set by `set_image`

    def _needs_image(self) -> Image:
        if self._image is None:
            raise InputError("no image: call set_image before adding prompts")
        return self._image

    @abstractmethod
    def set_image(self, image: Image) -> None:
        """The image to segment (its grid is kept: labels are on it). Clears the prompts."""

    @abstractmethod
    def labels(self) -> Image:
        """The current label map (1 = object, uint8) on the image's grid."""

    @abstractmethod
    def seed_with(self, labels: Image | np.ndarray) -> InteractionResult:
        """Start again from a label map (the previous result, say): clears the prompts; nonzero = object."""

    @abstractmethod
    def undo(self) -> bool:
        """Revert the last prompt; False when there is nothing to undo."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all prompts and the label map (the image stays)."""

    def add_point(self, position: Sequence[float], positive: bool = True, space: str = "RAS") -> InteractionResult:
        raise self._unsupported("point")

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float], positive: bool = True,
                space: str = "RAS") -> InteractionResult:
        raise self._unsupported("box")

    def add_scribble(self, points: Sequence[Sequence[float]], positive: bool = True, space: str = "RAS",
                     width: Optional[int] = None) -> InteractionResult:
        raise self._unsupported("scribble")

    def add_lasso(self, points: Sequence[Sequence[float]], positive: bool = True,
                  space: str = "RAS") -> InteractionResult:
        raise self._unsupported("lasso")

    def _unsupported(self, kind: str) -> InputError:
        return InputError(f"{self.family} models take {', '.join(self.kinds)} prompts, not a {kind}")

    def apply(self, prompt: Prompt) -> InteractionResult:
        """Run one prompt."""
        if prompt.kind not in self.kinds:
            raise self._unsupported(prompt.kind)
        if prompt.kind == "point":
            return self.add_point(prompt.points[0], prompt.positive, prompt.space)
        if prompt.kind == "box":
            return self.add_box(prompt.points[0], prompt.points[1], prompt.positive, prompt.space)
        if prompt.kind == "scribble":
            return self.add_scribble(prompt.points, prompt.positive, prompt.space, prompt.width)
        return self.add_lasso(prompt.points, prompt.positive, prompt.space)


class PromptedImage:
    """A session, its image and the prompts applied so far. `bring_to(prompts)` runs only what is new: the
    prompts after a known prefix, one undo when the last prompt was dropped, else a reset and a replay. So the
    caller always sends the whole history and the result never depends on what this process remembered."""

    def __init__(self, session: PromptSession, image: Image, seed: Optional[Image] = None) -> None:
        self.session, self.image, self.seed = session, image, seed
        self.history: list[Prompt] = []
        session.set_image(image)
        if seed is not None:
            session.seed_with(seed)

    def bring_to(self, prompts: Sequence[Prompt]) -> tuple[Image, list[float], bool]:
        """The label map after `prompts`, the seconds each prompt run now took, and whether the session had to
        start again from the first prompt (a remembered history that `prompts` neither extends nor undoes)."""
        prompts = list(prompts)
        seconds: list[float] = []
        replayed = False
        if prompts[:len(self.history)] == self.history:
            new = prompts[len(self.history):]
        elif prompts == self.history[:-1] and self.session.undo():
            self.history = prompts
            return self.session.labels(), seconds, replayed
        else:
            self.session.reset()
            if self.seed is not None:
                self.session.seed_with(self.seed)
            self.history, new, replayed = [], prompts, bool(self.history)
        for prompt in new:
            result = self.session.apply(prompt)
            self.history.append(prompt)
            seconds.append(result.seconds)
        return self.session.labels(), seconds, replayed
