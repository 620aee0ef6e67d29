"""An image with its physical geometry, in the ITK (LPS) convention the engine uses throughout.

`array` is indexed (k, j, i) = (slice, row, column), the order of SimpleITK's and Slicer's
numpy views, optionally with a trailing channel axis. `spacing` is (i, j, k) in mm, `origin`
is the LPS position of voxel (0, 0, 0) and `direction` holds the LPS unit vector of the i, j
and k axes in its columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

# Flips between LPS (ITK, DICOM) and RAS (Slicer, NIfTI world): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Image:
    """A 3D scalar or multi-channel image and its geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=float).reshape(3, 3))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape in (k, j, i) order."""
        return tuple(self.array.shape[:3])

    @property
    def channels(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    def index_to_lps(self) -> np.ndarray:
        """4x4 matrix taking (i, j, k, 1) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def index_to_ras(self) -> np.ndarray:
        """4x4 matrix taking (i, j, k, 1) voxel indices to RAS millimetres (Slicer's IJKToRAS)."""
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        return flip @ self.index_to_lps()

    def with_array(self, array: np.ndarray) -> Image:
        """The same geometry around another array of the same spatial shape."""
        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match image shape {self.shape}")
        return Image(array, self.spacing, self.origin, self.direction)

    def crop(self, start: tuple[int, int, int], stop: tuple[int, int, int]) -> Image:
        """The (k, j, i) box start..stop (exclusive) with its own origin: the same voxels in space."""
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        origin = self.index_to_lps() @ np.array([start[2], start[1], start[0], 1.0])
        return Image(np.ascontiguousarray(self.array[box]), self.spacing, tuple(origin[:3]), self.direction)

    def same_grid(self, other: Image, tolerance: float = 1e-4) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.index_to_lps(), other.index_to_lps(), atol=tolerance)
        )


def check_rectilinear(direction: np.ndarray, source: str = "the image") -> None:
    """Refuse a sheared grid (axes not orthogonal): a result on it could not be written back onto its voxels
    by any file format MedDL writes, and coercing the axes would move the result off the input's grid."""
    direction = np.asarray(direction, float).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError(f"{source} has a sheared (non-orthogonal) voxel grid, which MedDL cannot process or "
                         "write back on the same grid; resample it onto a rectilinear grid first (e.g. Slicer's "
                         "Resample Scalar Volume, or harden a shearing transform by resampling)")


def image_from_index_to_ras(array: np.ndarray, index_to_ras: np.ndarray) -> Image:
    """Build an image from a KJI array and a 4x4 IJK-to-RAS matrix (Slicer's convention)."""
    to_lps = np.eye(4)
    to_lps[:3, :3] = LPS_TO_RAS
    index_to_lps = to_lps @ np.asarray(index_to_ras, dtype=float)
    axes = index_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError("the image geometry has a zero spacing")
    check_rectilinear(axes / spacing)
    return Image(array, tuple(spacing), tuple(index_to_lps[:3, 3]), axes / spacing)


def blank_image(shape: tuple[int, ...], channels: int = 1) -> Image:
    """A zero image of `shape` (k, j, i) with `channels` channels: the small input a model is tried on."""
    return Image(np.zeros((*shape, channels) if channels > 1 else shape, np.float32))


def check_volume(image: Image, channels: int | None = None, what: str = "input image") -> None:
    """Raise InputError unless the image is a non-empty 3D volume with finite values."""
    array = image.array
    if array.ndim not in (3, 4):
        raise InputError(f"the {what} must be a 3D volume, but it has {array.ndim} dimensions {array.shape}")
    if array.size == 0 or min(array.shape[:3]) == 0:
        raise InputError(f"the {what} is empty (shape {array.shape})")
    if channels is not None and image.channels != channels:
        raise InputError(
            f"the {what} has {image.channels} channel(s) but the model expects {channels}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"the {what} has non-numeric voxels of type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.any():
            raise InputError(f"the {what} has no finite voxel values (all NaN or Inf)")


def check_scalar_volume(image: Image, what: str = "input image") -> None:
    """`check_volume`, and also: one channel, every voxel finite, not constant (enhancement, registration)."""
    check_volume(image, what=what)
    array = image.array
    if array.ndim != 3:
        raise InputError(f"the {what} must be a single-channel 3D volume, but it has shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"the {what} has NaN or infinite voxels; every voxel must be finite")
    if float(array.max()) == float(array.min()):
        raise InputError(f"the {what} is constant: it holds nothing to work on")
