"""Segmentation: image in, label map with named labels out; pipelines, training and the library's dry run."""

from .predict import SegmentationResult, labels_path_for, segment, segment_file

__all__ = ["SegmentationResult", "labels_path_for", "segment", "segment_file"]
