"""Registration: affine pre-alignment and deformable instance optimisation into ITK displacement fields."""
