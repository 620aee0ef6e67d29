"""Classification: images in, class probabilities and Grad-CAM saliency out; training from a CSV."""

from .predict import Classification, classify, saliency

__all__ = ["Classification", "classify", "saliency"]
