"""MedDL's MRML logic: scene nodes <-> the `meddl` engine, background jobs, first-use set-up.

Imports slicer's MRML classes and vtk, never qt or slicer.app, so that it runs both inside
Slicer and on the PyPI package slicer-core. Functions take the scene and nodes as arguments.
"""
