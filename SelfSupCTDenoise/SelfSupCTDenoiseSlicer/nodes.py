"""MRML node work of the module: checks, temporary files, output nodes, geometry, display, layout.

Everything here runs on real MRML nodes without the Slicer application (the `slicer-core` wheel
gives the scene, volume and storage nodes), so the project's CI tests it. Functions that need the
application (layout, slice views) say so and do nothing when it is absent.

Geometry rule: an output node gets the input's IJK-to-RAS matrix and parent transform copied
exactly, and its voxel array in the input's IJK order; nothing is ever resampled.
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import vtk

import slicer

DENOISED_SUFFIX = " denoised"
NOISE_MAP_SUFFIX = " noise map"
#: Node attributes use the engine's provenance field names (as in the NRRD headers it writes).
ATTRIBUTE_PREFIX = "SelfSupCTDenoise_"
#: Slicer's diverging blue-white-red colour table (loaded by the Colors module in the application).
DIVERGING_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
#: CT window presets (window, level) in HU.
CT_PRESETS = {
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (2000.0, 400.0),
    "brain": (80.0, 40.0),
}
#: Layout id of the LDCT | denoised | noise map arrangement (ids above 100 are free for modules).
THREE_VIEW_LAYOUT_ID = 5701
#: (singleton tag, view label, view colour) of the layout's own slice views: the layout creates
#: these slice nodes, so Slicer's standard Red, Yellow and Green views keep their orientation.
THREE_VIEWS = (("SelfSupCTDenoiseInput", "In", "#5B8BD9"), ("SelfSupCTDenoiseDenoised", "Out", "#4FB3A9"),
               ("SelfSupCTDenoiseNoise", "Noise", "#B07CC6"))
#: At least this many slices: the method adapts to a volume, not to a single image.
MIN_SLICES = 2
#: Smallest in-plane size the engine accepts.
MIN_IN_PLANE = 16


class InputVolumeError(ValueError):
    """The chosen node cannot be denoised; the message says why and what to do."""


@dataclass
class VolumeGeometry:
    """What an output must copy from its input, captured when the run starts."""

    ijkToRas: np.ndarray          # 4x4 float64
    dimensionsIjk: tuple          # (I, J, K) voxels
    transformNodeId: Optional[str]

    @property
    def arrayShape(self) -> tuple:
        """Shape of the voxel array (K, J, I) as `slicer.util.arrayFromVolume` returns it."""
        return tuple(reversed(self.dimensionsIjk))


def outputNames(inputName: str) -> tuple:
    """Names of the denoised and noise map nodes made from an input called `inputName`."""
    return inputName + DENOISED_SUFFIX, inputName + NOISE_MAP_SUFFIX


def validateInputVolume(volumeNode, ctCheck: bool = True) -> None:
    """Raise `InputVolumeError` unless `volumeNode` is a 3D single-channel CT volume in HU (`ctCheck`
    False: whether its values are CT in HU is not judged, as the engine's `ct_check`)."""
    if volumeNode is None:
        raise InputVolumeError("Select an input CT volume.")
    name = volumeNode.GetName() or volumeNode.GetID() or "the input"
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputVolumeError(f"'{name}' is a label map (a segmentation), not a CT image. Choose the CT volume.")
    if volumeNode.IsA("vtkMRMLVectorVolumeNode") or volumeNode.IsA("vtkMRMLDiffusionTensorVolumeNode"):
        raise InputVolumeError(f"'{name}' is a vector or colour volume. SelfSupCTDenoise needs a single-channel "
                               "CT volume in HU.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise InputVolumeError(f"'{name}' is a {volumeNode.GetClassName()}, not a scalar volume.")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise InputVolumeError(f"'{name}' holds no image data.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise InputVolumeError(f"'{name}' has {imageData.GetNumberOfScalarComponents()} values per voxel. "
                               "SelfSupCTDenoise needs a single-channel CT volume in HU.")
    dims = imageData.GetDimensions()
    if dims[2] < MIN_SLICES or min(dims[:2]) < MIN_IN_PLANE:
        raise InputVolumeError(
            f"'{name}' is {dims[0]}x{dims[1]}x{dims[2]} voxels: a 2D image or a very thin volume. "
            f"SelfSupCTDenoise needs a 3D CT volume of at least {MIN_SLICES} slices of "
            f"{MIN_IN_PLANE}x{MIN_IN_PLANE} pixels (load the whole series).")
    array = slicer.util.arrayFromVolume(volumeNode)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputVolumeError(f"'{name}' contains {bad} NaN or infinite voxel(s). Fill them (e.g. with "
                                   "-1024 HU) first.")
    # The engine's own CT checks (label-map-like values, HU range), reused so both sides agree.
    from SelfSupCTDenoiseLib.engine.ct_array import check_ct_array
    from SelfSupCTDenoiseLib.errors import InputError

    try:
        check_ct_array(array, f"'{name}'", ctCheck)
    except InputError as exc:
        raise InputVolumeError(str(exc)) from None


def captureGeometry(volumeNode) -> VolumeGeometry:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return VolumeGeometry(slicer.util.arrayFromVTKMatrix(matrix).copy(),
                          tuple(volumeNode.GetImageData().GetDimensions()),
                          volumeNode.GetTransformNodeID())


def writeVolumeFile(volumeNode, path: str) -> None:
    """Write a volume node to NRRD (uncompressed: a temporary file, speed matters) without touching the scene."""
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    storageNode.SetUseCompression(False)
    if not storageNode.WriteData(volumeNode):
        raise OSError(f"Could not write '{volumeNode.GetName()}' to {path} (disk full or not writable?).")


def readVolumeArray(path: str) -> np.ndarray:
    """Voxel array (K, J, I) of a volume file written by the worker, in the file's own order."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def createOutputVolume(scene, name: str, array: np.ndarray, geometry: VolumeGeometry, existingNode=None):
    """Put `array` into `existingNode` or a new scalar volume node with the input's exact geometry."""
    if tuple(array.shape) != geometry.arrayShape:
        raise ValueError(f"The result has shape {array.shape}, the input {geometry.arrayShape}: not the same grid.")
    node = existingNode
    if node is None or node.GetScene() is not scene:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(geometry.ijkToRas))
    node.SetAndObserveTransformNodeID(geometry.transformNodeId)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def setWindowLevel(volumeNode, window: float, level: float) -> None:
    displayNode = volumeNode.GetDisplayNode()
    if displayNode is None:
        return
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevel(window, level)


def applyCtPreset(volumeNode, preset: str = "soft tissue") -> None:
    """One of `CT_PRESETS` (soft tissue, lung, bone, brain)."""
    setWindowLevel(volumeNode, *CT_PRESETS[preset])


def noiseMapHalfWindow(noiseArray: np.ndarray) -> float:
    """Half width of a window symmetric around 0 HU that shows the noise map's texture (3 SD, >= 10 HU)."""
    step = max(1, noiseArray.shape[0] // 16)
    return float(max(10.0, 3.0 * np.std(noiseArray[::step], dtype=np.float64)))


def setNoiseMapDisplay(volumeNode, halfWindow: float) -> None:
    """Window symmetric around 0 HU; the diverging colour table where the scene has it."""
    setWindowLevel(volumeNode, 2.0 * halfWindow, 0.0)
    displayNode = volumeNode.GetDisplayNode()
    scene = volumeNode.GetScene()
    if displayNode is not None and scene is not None and scene.GetNodeByID(DIVERGING_COLOR_NODE_ID) is not None:
        displayNode.SetAndObserveColorNodeID(DIVERGING_COLOR_NODE_ID)


def copyWindowLevel(sourceNode, targetNode) -> None:
    source, target = sourceNode.GetDisplayNode(), targetNode.GetDisplayNode()
    if source is None or target is None:
        return
    target.SetAutoWindowLevel(source.GetAutoWindowLevel())
    target.SetWindowLevel(source.GetWindow(), source.GetLevel())
    if source.GetColorNodeID():
        target.SetAndObserveColorNodeID(source.GetColorNodeID())


def placeNextTo(node, referenceNode) -> None:
    """Put `node` under the same subject hierarchy parent (patient/study folder) as `referenceNode`."""
    scene = node.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene else None
    if shNode is None:
        return
    invalid = slicer.vtkMRMLSubjectHierarchyNode.GetInvalidItemID()
    referenceItem = shNode.GetItemByDataNode(referenceNode)
    parent = shNode.GetItemParent(referenceItem) if referenceItem != invalid else shNode.GetSceneItemID()
    item = shNode.GetItemByDataNode(node)
    if item == invalid:  # without the application no plugin creates items for new nodes
        shNode.CreateItem(parent, node)
    else:
        shNode.SetItemParent(item, parent)


def setProvenance(node, role: str, inputNode, info: Dict[str, Any]) -> None:
    """Record what made the node, saved with the scene: its role, the input, and the engine's
    provenance record (versions, device, seed, parameters, bundle checksum) as the same flat
    `SelfSupCTDenoise_<key>` fields the engine writes into NRRD headers."""
    from SelfSupCTDenoiseLib.files.provenance_io import to_nrrd_fields

    for key, value in to_nrrd_fields(info, ATTRIBUTE_PREFIX).items():
        node.SetAttribute(key, value)
    node.SetAttribute(ATTRIBUTE_PREFIX + "role", role)
    node.SetAttribute(ATTRIBUTE_PREFIX + "input_node_id", inputNode.GetID() or "")
    node.SetAttribute(ATTRIBUTE_PREFIX + "input_node_name", inputNode.GetName() or "")
    bundle = info.get("bundle") or {}
    summary = (f"SelfSupCTDenoise {role} of '{inputNode.GetName()}' (research use, not for diagnosis); "
               f"device {info.get('device', '?')}; bundle {bundle.get('name', '?')} "
               f"sha256 {str(bundle.get('sha256', '?'))[:12]}; seed {info.get('seed', '?')}.")
    node.SetDescription(summary)


def readProvenance(node) -> Dict[str, Any]:
    """The provenance record stored on a node by `setProvenance` (empty if none)."""
    from SelfSupCTDenoiseLib.files.provenance_io import from_nrrd_fields

    names = node.GetAttributeNames() or ()
    return from_nrrd_fields({name: node.GetAttribute(name) for name in names}, ATTRIBUTE_PREFIX)


def sceneSnapshot(scene) -> tuple:
    """IDs of every node in the scene: equal snapshots mean nothing was added or removed."""
    return tuple(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def threeViewLayoutXml() -> str:
    items = "".join(
        f'<item><view class="vtkMRMLSliceNode" singletontag="{tag}">'
        f'<property name="orientation" action="default">Axial</property>'
        f'<property name="viewlabel" action="default">{label}</property>'
        f'<property name="viewcolor" action="default">{color}</property>'
        "</view></item>"
        for tag, label, color in THREE_VIEWS)
    return f'<layout type="horizontal">{items}</layout>'


def hasApplication() -> bool:
    return hasattr(slicer, "app") and hasattr(slicer.app, "layoutManager") and slicer.app.layoutManager() is not None


def showThreeViews(inputNode, denoisedNode, noiseMapNode=None, preset: str = "soft tissue") -> bool:
    """LDCT | denoised | noise map in three linked axial views of the module's own (`THREE_VIEWS`),
    the same CT window on the first two. Needs the Slicer application; returns False (and does
    nothing) without it."""
    if not hasApplication():
        return False
    layoutManager = slicer.app.layoutManager()
    layoutNode = layoutManager.layoutLogic().GetLayoutNode()
    if layoutNode.IsLayoutDescription(THREE_VIEW_LAYOUT_ID):
        layoutNode.SetLayoutDescription(THREE_VIEW_LAYOUT_ID, threeViewLayoutXml())  # e.g. after a module reload
    else:
        layoutNode.AddLayoutDescription(THREE_VIEW_LAYOUT_ID, threeViewLayoutXml())
    layoutNode.SetViewArrangement(THREE_VIEW_LAYOUT_ID)
    window, level = CT_PRESETS[preset]
    for node in (inputNode, denoisedNode):
        setWindowLevel(node, window, level)
    for (tag, _, _), node in zip(THREE_VIEWS, (inputNode, denoisedNode, noiseMapNode)):
        sliceWidget = layoutManager.sliceWidget(tag)
        if sliceWidget is None:
            logging.warning("Slice view %s is missing; the result layout is incomplete.", tag)
            continue
        sliceLogic = sliceWidget.sliceLogic()
        sliceLogic.GetSliceNode().SetOrientation("Axial")
        composite = sliceLogic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(node.GetID() if node is not None else None)
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
        sliceLogic.FitSliceToAll()
    return True
