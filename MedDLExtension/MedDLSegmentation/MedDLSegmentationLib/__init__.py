"""Parts of the MedDL Segmentation module's panel kept out of the module file (Slicer loads only that as a module)."""
