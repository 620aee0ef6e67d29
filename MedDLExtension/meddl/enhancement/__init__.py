"""Enhancement: self-supervised denoising and through-plane super-resolution, and pretrained enhancement models."""

KINDS = ("denoise", "superres")  # what an enhancement does; a pretrained model's card names one
