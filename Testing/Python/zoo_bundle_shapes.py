"""MONAI bundles in the shapes the Model Zoo uses, written for the tests (not copied from the Zoo): tiny networks with
seeded random weights, the Zoo's usual transform chains, `$` expressions, a scripts/ folder, and its ids."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch

IMPORTS = ["$import glob", "$import numpy", "$import os"]


def _metadata(name: str, inputs: dict, outputs: dict, **extra) -> dict:
    return {"schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                      "meta_schema_20220324.json", "version": "0.1.0", "name": name, "license": "Apache-2.0",
            "monai_version": "1.4.0", "pytorch_version": "2.4.0", "numpy_version": "1.26.4",
            "optional_packages_version": {"nibabel": "5.2.1", "pytorch-ignite": "0.4.11"},
            "task": f"{name} (test)", "description": f"{name}: a bundle in the Model Zoo's shape, for tests",
            "network_data_format": {"inputs": inputs, "outputs": outputs}, **extra}


def _image_input(channels: int = 1, shape=(16, 16, 16), names=None, modality: str = "CT") -> dict:
    names = names or ["image"] * channels
    return {"image": {"type": "image", "format": "hounsfield", "modality": modality, "num_channels": channels,
                      "spatial_shape": list(shape), "dtype": "float32", "value_range": [0, 1],
                      "is_patch_data": True, "channel_def": {str(i): n for i, n in enumerate(names)}}}


def _segmentation_output(labels: list[str], key: str = "channel_def", binary: bool = False) -> dict:
    names = labels if binary else ["background", *labels]
    return {"pred": {"type": "image", "format": "segmentation", "num_channels": len(names),
                     "spatial_shape": [16, 16, 16], "dtype": "float32", "value_range": [0, 1],
                     "is_patch_data": True, key: {str(i): n for i, n in enumerate(names)}}}


def _infer_config(network_def: dict, preprocessing: list, postprocessing: list, inferer: dict,
                  image_key: str = "image", output_postfix: str = "seg") -> dict:
    """An inference.json as the Zoo writes them (spleen_ct_segmentation's ids and expressions)."""
    return {
        "imports": IMPORTS, "bundle_root": ".", "image_key": image_key, "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz", "output_dtype": "$numpy.float32", "output_postfix": output_postfix,
        "separate_folder": True, "load_pretrain": True, "dataset_dir": "/workspace/data/Task00",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def, "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 4},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$monai.utils.set_determinism(seed=123)",
                       "$@checkpointloader(@evaluator) if @load_pretrain else None"],
        "run": ["$@evaluator.run()"],
    }


def _ct_preprocessing(pixdim=(1.5, 1.5, 2.0)) -> list:
    return [{"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": list(pixdim), "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -57, "a_max": 164, "b_min": 0,
             "b_max": 1, "clip": True},
            {"_target_": "EnsureTyped", "keys": "@image_key"}]


def _label_postprocessing(activation: dict | None = None) -> list:
    return [{"_target_": "Activationsd", "keys": "pred", **(activation or {"softmax": True})},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
             "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
             "separate_folder": "@separate_folder"}]


def _save(folder: Path, metadata: dict, config: dict, network: torch.nn.Module) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def _seeded(factory, **args) -> torch.nn.Module:
    torch.manual_seed(7)
    return factory(**args)


def segresnet_bundle(folder: Path) -> Path:
    """spleen/wholeBody-style: SegResNet, RAS + 1.5x1.5x2 mm + CT window, sliding window, inverted label map."""
    from monai.networks.nets import SegResNet

    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_filters": 8, "blocks_down": [1, 1],
            "blocks_up": [1]}
    network = _seeded(SegResNet, **args)
    config = _infer_config({"_target_": "SegResNet", **args}, _ct_preprocessing(), _label_postprocessing(),
                           {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2,
                            "overlap": 0.5})
    metadata = _metadata("segresnet_test", _image_input(), _segmentation_output(["liver", "spleen"]))
    return _save(folder, metadata, config, network)


def swin_unetr_bundle(folder: Path) -> Path:
    """swin_unetr_btcv-style: Swin UNETR (feature size 12), 64^3 windows, label names from channel_def."""
    from monai.networks.nets import SwinUNETR

    args = {"in_channels": 1, "out_channels": 4, "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
    network = _seeded(SwinUNETR, **args)
    preprocessing = _ct_preprocessing((1.2, 1.2, 1.5))
    preprocessing[4].update({"a_min": -175, "a_max": 250})
    config = _infer_config({"_target_": "SwinUNETR", **args}, preprocessing, _label_postprocessing(),
                           {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 64], "sw_batch_size": 1,
                            "overlap": 0.25})
    metadata = _metadata("swin_test", _image_input(), _segmentation_output(["spleen", "kidney", "gallbladder"]))
    return _save(folder, metadata, config, network)


SCRIPTS_NET = '''
import torch


class TinyNet(torch.nn.Module):
    """A network only this bundle's scripts/ define."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 4):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv3d(in_channels, width, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv3d(width, out_channels, 3, padding=1))

    def forward(self, x):
        return self.body(x)
'''

SCRIPTS_TRANSFORM = '''
from monai.transforms import MapTransform


class Shift(MapTransform):
    """A custom transform of this bundle: adds a constant."""

    def __init__(self, keys, offset: float):
        super().__init__(keys)
        self.offset = offset

    def __call__(self, data):
        data = dict(data)
        for key in self.keys:
            data[key] = data[key] + self.offset
        return data
'''


def scripts_bundle(folder: Path) -> Path:
    """A bundle whose network and one transform live in its scripts/ (pediatric-style label_def metadata)."""
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "__init__.py").write_text("")
    (folder / "scripts" / "net.py").write_text(textwrap.dedent(SCRIPTS_NET))
    (folder / "scripts" / "transforms.py").write_text(textwrap.dedent(SCRIPTS_TRANSFORM))
    import importlib.util

    spec = importlib.util.spec_from_file_location("meddl_test_tinynet", folder / "scripts" / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = _seeded(module.TinyNet, in_channels=1, out_channels=3)
    preprocessing = _ct_preprocessing((2.0, 2.0, 2.0))
    preprocessing.insert(5, {"_target_": "scripts.transforms.Shift", "keys": "@image_key", "offset": -0.5})
    config = _infer_config({"_target_": "scripts.net.TinyNet", "in_channels": 1, "out_channels": 3},
                           preprocessing, _label_postprocessing(),
                           {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1})
    config["imports"] = [*IMPORTS, "$import scripts", "$import scripts.net"]
    metadata = _metadata("scripts_test", _image_input(), _segmentation_output(["liver", "pancreas"], "label_def"))
    return _save(folder, metadata, config, network)


def two_channel_bundle(folder: Path) -> Path:
    """brats-style: two co-registered volumes, one file each, stacked by LoadImaged; sigmoid channels."""
    from monai.networks.nets import SegResNet

    args = {"spatial_dims": 3, "in_channels": 2, "out_channels": 2, "init_filters": 8, "blocks_down": [1, 1],
            "blocks_up": [1]}
    network = _seeded(SegResNet, **args)
    preprocessing = [{"_target_": "LoadImaged", "keys": "@image_key", "image_only": False},
                     {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True,
                      "channel_wise": True}]
    postprocessing = _label_postprocessing({"sigmoid": True})
    postprocessing[2] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
    config = _infer_config({"_target_": "SegResNet", **args}, preprocessing, postprocessing,
                           {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1,
                            "overlap": 0.5})
    config["test_datalist"] = "$[{'image': [i, i]} for i in @datalist]"
    config["dataset"]["data"] = "@test_datalist"
    metadata = _metadata("two_channel_test", _image_input(2, names=["T1", "FLAIR"], modality="MR"),
                         _segmentation_output(["whole", "core"], binary=True))
    return _save(folder, metadata, config, network)


def classifier_2d_bundle(folder: Path) -> Path:
    """breast_density/mednist-style 2D classifier: resize, softmax, checkpoint loaded by a handler, run id
    `evaluating`."""
    from monai.networks.nets import DenseNet

    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "init_features": 4, "growth_rate": 4,
            "block_config": [1, 1], "bn_size": 2}
    network = _seeded(DenseNet, **args)
    preprocessing = [{"_target_": "LoadImaged", "keys": "image"},
                     {"_target_": "EnsureChannelFirstd", "keys": "image"},
                     {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
                     {"_target_": "Resized", "keys": "image", "spatial_size": [32, 32]}]
    config = _infer_config({"_target_": "DenseNet", **args}, preprocessing,
                           [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
                           {"_target_": "SimpleInferer"})
    for unused in ("checkpointloader", "initialize", "run", "image_key", "output_postfix"):
        del config[unused]
    config["handlers"].insert(0, {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                                  "load_dict": {"model": "@network"}})
    config["evaluating"] = ["$setattr(torch.backends.cudnn, 'benchmark', True)", "$@evaluator.run()"]
    classes = {"0": "A", "1": "B", "2": "C"}
    metadata = _metadata("classifier_test", _image_input(1, (32, 32), modality="X-ray"),
                         {"pred": {"type": "probabilities", "format": "classes", "num_channels": 3,
                                   "spatial_shape": [1, 3], "dtype": "float32", "value_range": [0, 1],
                                   "is_patch_data": False, "channel_def": classes}})
    return _save(folder, metadata, config, network)


def _registration_metadata(shape: tuple[int, int, int]) -> dict:
    image = {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1, "spatial_shape": list(shape),
             "dtype": "float32", "value_range": [0, 1], "is_patch_data": False}
    ddf = {"type": "image", "format": "displacement field", "num_channels": 3, "spatial_shape": list(shape),
           "dtype": "float32", "is_patch_data": False,
           "channel_def": {str(axis): f"displacement along array axis {axis} (voxels)" for axis in range(3)}}
    return _metadata("registration_test", {"fixed_image": image, "moving_image": dict(image)}, {"pred": ddf})


def registration_bundle(folder: Path, shape: tuple[int, int, int] = (24, 20, 16), ddf_output: bool = True) -> Path:
    """A LocalNet registration bundle: fixed and moving images loaded and scaled to [0, 1], concatenated (moving,
    fixed) as the network's input, its DDF as `pred`, and the moving image warped by MONAI's Warp in its own
    postprocessing (`warped`). With `ddf_output` False its pred is the warped image instead (as mednist_reg's)."""
    from monai.networks.nets import LocalNet

    args = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "num_channel_initial": 4,
            "extract_levels": [0, 1, 2]}
    network = _seeded(LocalNet, **args)
    keys = ["@fixed_key", "@moving_key"]
    preprocessing = [{"_target_": "LoadImaged", "keys": keys}, {"_target_": "EnsureChannelFirstd", "keys": keys},
                     {"_target_": "ScaleIntensityd", "keys": keys, "minv": 0.0, "maxv": 1.0},
                     {"_target_": "ConcatItemsd", "keys": ["@moving_key", "@fixed_key"], "name": "image"},
                     {"_target_": "EnsureTyped", "keys": "image"}]
    postprocessing = [
        {"_target_": "Lambda", "func": "$lambda d: dict(d, warped=@warp(d[@moving_key][None], d['pred'][None])[0])"},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "ddf",
         "resample": False, "separate_folder": False}]
    if not ddf_output:
        postprocessing.append({"_target_": "Lambda", "func": "$lambda d: dict(d, pred=d['warped'])"})
    config = _infer_config({"_target_": "LocalNet", **args}, preprocessing, postprocessing,
                           {"_target_": "SimpleInferer"})
    config.update({"fixed_key": "fixed_image", "moving_key": "moving_image",
                   "warp": {"_target_": "monai.networks.blocks.Warp", "mode": "bilinear", "padding_mode": "border"},
                   "datalist": "$[{'fixed_image': f, 'moving_image': f.replace('_fixed', '_moving')} "
                               "for f in sorted(glob.glob(@dataset_dir + '/*_fixed.nii.gz'))]"})
    config["dataset"]["data"] = "@datalist"
    del config["image_key"], config["output_postfix"]
    return _save(folder, _registration_metadata(shape), config, network)
