"""The model library: the user's model folder, downloads, imports and removals."""
