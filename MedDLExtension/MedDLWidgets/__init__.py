"""Qt widgets shared by every MedDL module (they run inside Slicer only)."""
