"""Running segmentation networks: preprocessing, sliding-window inference, postprocessing."""
