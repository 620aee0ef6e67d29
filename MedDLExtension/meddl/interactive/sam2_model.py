"""A SAM 2 model on disk, read offline: its files, its configuration, its licence, and the package's video
predictor built from them.

Layouts MedDL accepts:
- a folder holding `config.yaml` and `checkpoint.pt` (and optionally `LICENSE`), or
- a checkpoint `NAME.pt` (or `.pth`) with `NAME.yaml` (or `.yml`) beside it (and optionally `LICENSE`).

The checkpoint is what SAM 2 and MedSAM2 publish: `{"model": state_dict}`. The configuration is either a whole
SAM 2 model configuration (a yaml file with `model: {_target_: sam2.modeling.sam2_base.SAM2Base, ...}`, as the
sam2 package and MedSAM2 ship them) or a reference to one of the package's own, with optional overrides:

    sam2_config: configs/sam2.1/sam2.1_hiera_t.yaml
    overrides: ["++model.image_size=512"]

Overrides are hydra-style `key=value` strings (a leading `+` or `++` is accepted). The model is built as
`sam2.build_sam.build_sam2_video_predictor` builds it (the video predictor class and the package's
post-processing settings), plus MedDL's own setting `add_all_frames_to_correct_as_cond` so that a prompt on an
already propagated slice stays a conditioning slice (the package's default drops such corrections at the next
propagation). Nothing is downloaded. Without trust, the configuration may name only sam2's model classes and no
`weights_path`, and the checkpoint is unpickled with `weights_only=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from ..errors import ModelError
from ..models import networks

log = logging.getLogger(__name__)
FOLDER_FILES = ("config.yaml", "checkpoint.pt")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
CONFIG_SUFFIXES = (".yaml", ".yml")
PREDICTOR = "sam2.sam2_video_predictor.SAM2VideoPredictor"
SAFE_TARGETS = ("sam2.modeling.", PREDICTOR)
UNKNOWN_LICENSE = "unknown: see the checkpoint's source"
# build_sam2_video_predictor's settings: the predictor class, then its post-processing ("apply_postprocessing")
PACKAGE_OVERRIDES = [f"model._target_={PREDICTOR}"]
POSTPROCESSING = [
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "model.binarize_mask_from_pts_for_mem_enc=true",
    "model.fill_hole_area=8",
]
MEDDL_OVERRIDES = ["model.add_all_frames_to_correct_as_cond=true"]


def model_files(path: str | Path) -> Optional[tuple[Path, Path]]:
    """(checkpoint, configuration) of a SAM 2 model in one of MedDL's layouts, or None."""
    path = Path(path)
    if path.is_dir():
        config, checkpoint = (path / name for name in FOLDER_FILES)
        return (checkpoint, config) if config.is_file() and checkpoint.is_file() else None
    if path.suffix in CHECKPOINT_SUFFIXES and path.is_file():
        for suffix in CONFIG_SUFFIXES:
            if path.with_suffix(suffix).is_file():
                return path, path.with_suffix(suffix)
    return None


def is_sam2_model(path: str | Path) -> bool:
    """Whether `path` is a SAM 2 checkpoint with a configuration naming SAM 2 (see the module docstring)."""
    try:
        files = model_files(path)
        if files is None:
            return False
        data = yaml.safe_load(files[1].read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    if not isinstance(data, dict):
        return False
    model = data.get("model")
    return "sam2_config" in data or (isinstance(model, dict) and str(model.get("_target_", "")).startswith("sam2."))


def _package_config(name: Any, source: Path) -> Path:
    """The sam2 package's configuration file `name` (e.g. configs/sam2.1/sam2.1_hiera_t.yaml)."""
    import sam2

    root = Path(sam2.__file__).resolve().parent
    path = (root / str(name)).resolve()
    if not path.is_relative_to(root / "configs") or path.suffix != ".yaml" or not path.is_file():
        known = sorted(str(p.relative_to(root)) for p in (root / "configs").glob("sam2*/*.yaml"))
        raise ModelError(f"{source}: sam2_config {name!r} is not one of the sam2 package's configurations "
                         f"({', '.join(known)})")
    return path


def _dotlist(overrides: Any, source: Path) -> list[str]:
    """Hydra-style overrides as OmegaConf dot-list entries."""
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ModelError(f"{source}: 'overrides' is a list of 'key=value' strings")
    entries = [item.lstrip("+") for item in overrides]
    bad = [item for item in entries if "=" not in item or item.startswith(("~", "="))]
    if bad:
        raise ModelError(f"{source}: overrides are 'key=value' (a leading + or ++ allowed), not {bad[0]!r}")
    return entries


def compose(config_file: Path) -> Any:
    """The model configuration (an OmegaConf DictConfig), resolved, with the package's and MedDL's settings."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        data = OmegaConf.load(config_file)
        if not OmegaConf.is_dict(data):
            raise ModelError(f"{config_file} is not a SAM 2 configuration: it is not a mapping")
        raw = data.get("overrides")
        overrides = _dotlist([] if raw is None else OmegaConf.to_container(raw), config_file)
        if "sam2_config" in data:
            base = OmegaConf.load(_package_config(data.sam2_config, config_file))
        else:
            base = OmegaConf.masked_copy(data, [key for key in data if key != "overrides"])
        fill_holes = POSTPROCESSING if _has_extension() else POSTPROCESSING[:-1] + ["model.fill_hole_area=0"]
        config = OmegaConf.merge(base, OmegaConf.from_dotlist(PACKAGE_OVERRIDES + overrides + fill_holes
                                                              + MEDDL_OVERRIDES))
        OmegaConf.resolve(config)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise ModelError(f"{config_file} is not a usable SAM 2 configuration: {_short(error)}") from None
    if not OmegaConf.is_dict(config.get("model")):
        raise ModelError(f"{config_file} is not a SAM 2 configuration: it has no 'model'")
    return config


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def _has_extension() -> bool:
    """Whether sam2's compiled extension (used to fill small holes in masks) is there; without it the package
    warns on every frame and skips the step, so MedDL turns the step off instead (the same masks)."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def _code_named(node: Any) -> list[str]:
    """`_target_`s outside sam2's model classes, and any `weights_path`, anywhere in a configuration."""
    found = []
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(SAFE_TARGETS):
            found.append(str(target))
        if node.get("weights_path") is not None:
            found.append(f"weights_path {node['weights_path']}")
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            found += _code_named(item)
    return found


def check_code(config: Any, trust: bool, source: Path) -> None:
    """Without trust, the configuration may instantiate only sam2's model classes and load no other file."""
    from omegaconf import OmegaConf

    foreign = _code_named(OmegaConf.to_container(config, resolve=True))
    if foreign and not trust:
        raise ModelError(f"{source} names code or files outside sam2's model classes ({', '.join(foreign)}); "
                         "pass --trust-model only if you trust its source")


def load_weights(checkpoint: Path, trust: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict (tensors only unless trusted)."""
    return networks.state_dict_of(networks.load_checkpoint(checkpoint, trust), checkpoint)


def build_predictor(config: Any, weights: dict[str, torch.Tensor], device: str, source: Path) -> Any:
    """The package's SAM2VideoPredictor from a composed configuration, with the checkpoint's weights (all of
    them, and nothing else), in eval mode on `device`."""
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    try:
        model = instantiate(config.model, _recursive_=True)
    except (HydraException, TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise ModelError(f"{source}: sam2 cannot build the model its configuration describes: "
                         f"{_short(error)}") from None
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ModelError(f"the weights in {source} do not fit the SAM 2 model its configuration describes: "
                         f"{_short(error)}") from None
    return model.to(torch.device(device)).eval()


def read_license(checkpoint: Path) -> tuple[str, str]:
    """(identifier, text) of the LICENSE file beside the checkpoint: its first line and its text. SAM 2's code
    and Meta's checkpoints are Apache-2.0, but fine-tuned ones (MedSAM2) carry their own licence."""
    license_file = checkpoint.parent / "LICENSE"
    if not license_file.is_file():
        return UNKNOWN_LICENSE, ("The sam2 package is Apache-2.0; this checkpoint came without a LICENSE file, so "
                                 "its licence is unknown: see where it came from.")
    text = license_file.read_text(encoding="utf-8", errors="replace")
    first = next((line.strip() for line in text.splitlines() if line.strip()), UNKNOWN_LICENSE)
    return first, text
