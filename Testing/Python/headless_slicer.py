"""Slicer's application without Qt, for the tests, the demo and the benchmarks (not shipped in the extension).

`HeadlessScene` sets a scene up the way Slicer's application does: Slicer registers the segmentation
converters, colour tables and subject hierarchy when its module logics are given the scene at start-up.
`render_slice_view` renders a real Slicer slice view off-screen to PNG: the same classes as Slicer's slice
views, without Qt: the slice logic reslices and blends the volume layers, the 2D segmentation displayable
manager draws the segments on top.
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


SLICE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D",)


def _layered_window(size: int):
    """An off-screen window: resliced volume layers in layer 0, displayable managers' actors in layer 1."""
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(size, size)
    window.SetAlphaBitPlanes(1)
    renderer, overlay = vtk.vtkRenderer(), vtk.vtkRenderer()
    window.SetNumberOfLayers(2)
    for layer, layer_renderer in enumerate((renderer, overlay)):
        layer_renderer.SetLayer(layer)
        layer_renderer.GetActiveCamera().ParallelProjectionOn()
        window.AddRenderer(layer_renderer)
    interactor = vtk.vtkGenericRenderWindowInteractor()  # displayable managers observe the interactor
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window, renderer, overlay, interactor


def _slice_logic(headless, volume_node, name: str, orientation: str):
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(headless.application_logic)
    headless.application_logic.GetSliceLogics().AddItem(logic)
    logic.SetMRMLScene(headless.scene)
    logic.AddSliceNode(name).SetOrientation(orientation)
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
    return logic


def _displayable_managers(headless, overlay, slice_node):
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(headless.application_logic)
    for manager in SLICE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, overlay)
    group.SetMRMLDisplayableNode(slice_node)
    return group


def _write_png(window, path: str) -> None:
    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(window)
    capture.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(capture.GetOutputPort())
    writer.Write()


def render_slice_view(headless, volume_node, path: str, orientation: str = "Axial", size: int = 512,
                      offset: float | None = None, name: str = "Red") -> str:
    """Render the volume (and visible segmentations) in a slice view and write a PNG."""
    window, renderer, overlay, _interactor = _layered_window(size)
    logic = _slice_logic(headless, volume_node, name, orientation)
    _group = _displayable_managers(headless, overlay, logic.GetSliceNode())  # kept alive while rendering
    logic.ResizeSliceNode(size, size)
    logic.FitSliceToBackground()
    if offset is not None:
        logic.SetSliceOffset(offset)
    logic.SnapSliceOffsetToIJK()
    mapper = vtk.vtkImageMapper()
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(actor)
    window.Render()
    _write_png(window, path)
    headless.application_logic.GetSliceLogics().RemoveItem(logic)
    window.Finalize()
    return str(path)
