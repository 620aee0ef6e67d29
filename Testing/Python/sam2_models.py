"""SAM 2 models with seeded random weights, built by the sam2 package from its own SAM 2.1 Hiera-tiny
configuration (`build_sam2`), written in MedDL's layouts (see meddl.interactive.sam2_model).

Only the input size is shrunk (128 pixels instead of 1024, with the memory attention's RoPE grid to match), so
CPU tests are quick; the architecture is the released one. `build` writes a folder (config.yaml naming the
package's configuration with overrides, checkpoint.pt, LICENSE); `build_file` a checkpoint with a whole
configuration beside it, as MedSAM2 ships them.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
IMAGE_SIZE = 128


def overrides(image_size: int = IMAGE_SIZE) -> list[str]:
    """Hydra overrides of the package's configuration for a smaller input (a multiple of 32)."""
    grid = f"[{image_size // 16},{image_size // 16}]"
    return [f"++model.image_size={image_size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes={grid}",
            f"++model.memory_attention.layer.cross_attention.feat_sizes={grid}"]


def _save_weights(path: Path, image_size: int, seed: int) -> None:
    import torch
    from sam2.build_sam import build_sam2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2(CONFIG, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides(image_size),
                           apply_postprocessing=False)
    torch.save({"model": model.state_dict()}, path)


def build(out: Path, seed: int = 0, image_size: int = IMAGE_SIZE,
          licence: str = "Apache-2.0 (random test weights)") -> Path:
    """A model folder at `out`: config.yaml (the package's configuration and overrides), checkpoint.pt, LICENSE."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"sam2_config": CONFIG, "overrides": overrides(image_size)}))
    (out / "LICENSE").write_text(f"{licence}\n\nFull licence text would follow here.\n")
    _save_weights(out / "checkpoint.pt", image_size, seed)
    return out


def build_file(checkpoint: Path, weights_from: Path, image_size: int = IMAGE_SIZE) -> Path:
    """`checkpoint` (a link to `weights_from`'s checkpoint) with a whole configuration beside it (NAME.yaml)."""
    import sam2
    from omegaconf import OmegaConf

    checkpoint = Path(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.load(Path(sam2.__file__).parent / CONFIG)
    config = OmegaConf.merge(config, OmegaConf.from_dotlist([item.lstrip("+") for item in overrides(image_size)]))
    OmegaConf.save(config, checkpoint.with_suffix(".yaml"))
    checkpoint.symlink_to(Path(weights_from).resolve())
    return checkpoint
