"""nnU-Net's postprocessing of a results folder, loaded without running code.

`nnUNetv2_find_best_configuration` decides per label whether keeping only the largest connected component
helps and saves the decision as `crossval_results_folds_<folds>/postprocessing.pkl` in the results folder
(`nnUNetv2_export_model_to_zip` ships it); nnU-Net's inference instructions apply it to every prediction.
The pickle holds nnU-Net functions and their keyword arguments, so it is unpickled with an allow-list: the
postprocessing functions nnU-Net ships and numpy scalars. Anything else needs `--trust-model`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ModelError

FILE_NAME = "postprocessing.pkl"
ALLOWED_GLOBALS = {
    ("nnunetv2.postprocessing.remove_connected_components", "remove_all_but_largest_component_from_segmentation"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
}


@dataclass(frozen=True)
class Postprocessing:
    """nnU-Net's postprocessing steps, applied in order to a label map, and the file they came from."""

    functions: tuple[Callable, ...]
    arguments: tuple[dict, ...]
    source: Path

    def __call__(self, labels):
        for function, arguments in zip(self.functions, self.arguments):
            labels = function(labels, **arguments)
        return labels

    def describe(self) -> list[str]:
        return [f"{function.__name__}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"
                for function, arguments in zip(self.functions, self.arguments)]


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not one of nnU-Net's postprocessing functions")
        return super().find_class(module, name)


def find(folder: Path, folds: list[str]) -> Optional[Path]:
    """The postprocessing.pkl of the cross-validation of exactly `folds`, else the only one in `folder`."""
    exact = folder / f"crossval_results_folds_{'_'.join(folds)}" / FILE_NAME
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"crossval_results_folds_*/{FILE_NAME}"))
    return found[0] if len(found) == 1 else None


def load(folder: Path, folds: list[str], trust: bool) -> Optional[Postprocessing]:
    """The postprocessing nnU-Net determined for the results folder `folder`, or None where it has none."""
    path = find(folder, folds)
    if path is None:
        return None
    try:
        with open(path, "rb") as stream:
            loaded = pickle.load(stream) if trust else _AllowListUnpickler(stream).load()
    except pickle.UnpicklingError as error:
        raise ModelError(f"{path} holds more than nnU-Net's postprocessing ({error}); unpickling it could run "
                         "code: pass --trust-model only if you trust its source") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise ModelError(f"{path} is not a readable nnU-Net postprocessing file: {error}") from None
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and all(isinstance(part, list) for part in loaded)
            and len(loaded[0]) == len(loaded[1]) and all(map(callable, loaded[0]))
            and all(isinstance(arguments, dict) for arguments in loaded[1])):
        raise ModelError(f"{path} is not nnU-Net's (functions, keyword arguments) postprocessing pair")
    return Postprocessing(tuple(loaded[0]), tuple(loaded[1]), path)
