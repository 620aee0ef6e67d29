"""nnInteractive model folders with seeded random weights, built through nnU-Net's plans and nnInteractive's own
network construction (`nnInteractiveTrainer_stub.build_network_architecture`, a ResidualEncoderUNet).

The layout is the one nnInteractive's session reads: plans.json, dataset.json, the legacy
inference_session_class.json, LICENSE and fold_0/checkpoint_final.pth. The "tiny" preset (4 stages, 8..32
features, patch 64^3) keeps CPU tests fast; nnInteractive refines with a 24-voxel margin, so the patch must
exceed 48 voxels (and a patch barely above it, e.g. 52, makes its refinement planner take minutes). The
"published" preset is nnU-Net's ResEncL layout at the published checkpoint's patch size (6 stages, 32..320 features,
patch 192^3).
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIGURATION = "3d_fullres_ps192_bs24"
PRESETS = {  # stages, features per stage, blocks per stage, patch
    "tiny": (4, [8, 16, 32, 32], [1, 2, 2, 2], [64, 64, 64]),
    "published": (6, [32, 64, 128, 256, 320, 320], [1, 3, 4, 6, 6, 6], [192, 192, 192]),
}


def _architecture(preset: str) -> dict:
    stages, features, blocks, _ = PRESETS[preset]
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {
            "n_stages": stages, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * stages, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
            "n_blocks_per_stage": blocks, "n_conv_per_stage_decoder": [1] * (stages - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans(preset: str = "tiny") -> dict:
    """nnU-Net plans with one configuration, named as the published nnInteractive checkpoint's."""
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": PRESETS[preset][3], "median_image_size_in_voxels": [128, 128, 128],
        "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": _architecture(preset), "batch_dice": True,
    }
    return {
        "dataset_name": "Dataset999_nnInteractiveRandom", "plans_name": "nnUNetResEncUNetLPlans_noResampling",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [128, 128, 128], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration}, "experiment_planner_used": "nnUNetPlannerResEncL",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0, "percentile_99_5": 1.0,
            "std": 1.0}},
    }


def build(out: Path, seed: int = 0, licence: str = "Apache-2.0 (random test weights)", preset: str = "tiny",
          background_bias: float = 2.0) -> Path:
    """Write a random-weights nnInteractive model folder to `out` and return it. A random network calls about
    half of any image the object, so every prompt changes the patch border and the session zooms out to 4x the
    patch (256^3 voxels for the tiny preset: seconds per prompt on a CPU). `background_bias` (added to the
    output layer's background logit) keeps its objects small, as a trained network's are: no zoom-out."""
    import torch
    from nnInteractive.trainer.nnInteractiveTrainer import nnInteractiveTrainer_stub
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = Path(out)
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(plans(preset), indent=2))
    (out / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "any"}, "labels": {"background": 0, "object": 1}, "numTraining": 0,
        "file_ending": ".nii.gz"}))
    (out / "inference_session_class.json").write_text(json.dumps({
        "inference_class": "nnInteractiveInferenceSession", "point_radius": 4, "preferred_scribble_thickness": 2,
        "interaction_decay": 0.9}))
    (out / "LICENSE").write_text(f"{licence}\n\nFull licence text would follow here.\n")
    torch.manual_seed(seed)
    manager = PlansManager(plans(preset))
    # 1 image channel + 7 interaction channels (previous segmentation, +/- for box, point, scribble); 2 outputs
    network = nnInteractiveTrainer_stub.build_network_architecture(
        manager, manager.get_configuration(CONFIGURATION), 1 + 7, 2, enable_deep_supervision=False)
    with torch.no_grad():
        network.decoder.seg_layers[-1].bias[0] += background_bias
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnInteractiveTrainer_stub",
                "init_args": {"configuration": CONFIGURATION}}, out / "fold_0" / "checkpoint_final.pth")
    return out
