"""Enhancement: self-supervised denoising and through-plane super-resolution, and pretrained enhancement models."""
