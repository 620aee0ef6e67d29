"""A scene set up the way Slicer's application sets it up, for use outside Slicer (slicer-core).

Slicer registers the segmentation converters, colour tables and subject hierarchy when its
module logics are given the scene at start-up; scripts, tests and the demo do the same here.
"""

from __future__ import annotations

import slicer
import vtk


class HeadlessScene:
    """An MRML scene with the logics Slicer would attach to it (kept alive with the scene)."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkMRMLApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        self.application_logic.SetSliceLogics(vtk.vtkCollection())
        self.color_logic = slicer.vtkMRMLColorLogic()
        self.color_logic.SetMRMLScene(self.scene)
        self.application_logic.SetColorLogic(self.color_logic)
        self.segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations_logic.SetMRMLScene(self.scene)
        self.subject_hierarchy_logic = slicer.vtkSlicerSubjectHierarchyModuleLogic()
        self.subject_hierarchy_logic.SetMRMLScene(self.scene)
        self.volumes_logic = slicer.vtkSlicerVolumesLogic()
        self.volumes_logic.SetMRMLScene(self.scene)

    def load_volume(self, path: str, name: str | None = None):
        """Read a volume file into a new scalar volume node through Slicer's storage node."""
        volume = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or "Volume")
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        if not storage.ReadData(volume):
            self.scene.RemoveNode(volume)
            self.scene.RemoveNode(storage)
            raise OSError(f"Slicer's volume reader could not read {path}")
        volume.SetAndObserveStorageNodeID(storage.GetID())
        volume.CreateDefaultDisplayNodes()
        return volume

    def save_node(self, node, path: str) -> None:
        """Write a node with its default storage node (.nrrd, .seg.nrrd, .h5, ...)."""
        storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
        if storage.GetScene() is None:
            self.scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise OSError(f"could not write {node.GetName()} to {path}")
