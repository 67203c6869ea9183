"""Region noise table of the panel: noise SD and mean (HU) before and after, in a Markups ROI or in
uniform soft-tissue regions found automatically, with the HU shift and the method-noise reading.

The numbers come from the engine's `trust_report` (the same as `selfsupctdenoise evaluate` and the
benchmark); this module only turns an ROI into a voxel box and the report into a table node.
"""

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np
import vtk

import slicer

from . import nodes

TABLE_SUFFIX = " noise regions"
COLUMNS = ("region", "box (z,y,x voxels)", "image", "mean HU", "SD HU", "voxels")


def rasBoundsToBox(rasBounds: Sequence[float], rasToIjk: np.ndarray, shapeKji: Sequence[int]):
    """The voxels whose centres lie in the RAS box (xmin, xmax, ymin, ymax, zmin, zmax), as an engine
    `Box` in array (k, j, i) = (z, y, x) order, clipped to the volume. For an oblique volume this is
    the IJK-aligned box around the ROI's eight corners. Raises ValueError when no voxel is inside."""
    from SelfSupCTDenoiseLib.quality.regions import Box

    corners = np.array([[x, y, z, 1.0] for x in rasBounds[0:2] for y in rasBounds[2:4] for z in rasBounds[4:6]])
    ijk = (np.asarray(rasToIjk, float) @ corners.T)[:3]
    bounds = []
    for axis, size in zip((2, 1, 0), shapeKji):  # k, j, i
        # round first so that a bound exactly on a voxel centre is not lost to float error
        start = max(0, math.ceil(round(float(ijk[axis].min()), 6)))
        stop = min(int(size), math.floor(round(float(ijk[axis].max()), 6)) + 1)
        if stop <= start:
            raise ValueError("The ROI does not contain any voxel centre of the volume: move it onto the "
                             "volume or make it larger.")
        bounds += [start, stop]
    return Box(*bounds)


def worldToIjk(volumeNode) -> np.ndarray:
    """World RAS -> the volume's IJK, through its (linear) parent transform if it has one."""
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    matrix = slicer.util.arrayFromVTKMatrix(rasToIjk)
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is not None:
        if not transformNode.IsTransformToWorldLinear():
            raise ValueError(f"'{volumeNode.GetName()}' is under a non-linear transform: harden it first.")
        toWorld = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(toWorld)
        matrix = matrix @ np.linalg.inv(slicer.util.arrayFromVTKMatrix(toWorld))
    return matrix


def roiBox(roiNode, volumeNode):
    """The ROI's world RAS bounds as a voxel `Box` of `volumeNode`."""
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)
    return rasBoundsToBox(bounds, worldToIjk(volumeNode), slicer.util.arrayFromVolume(volumeNode).shape)


def fillTable(tableNode, report: Dict[str, Any]) -> None:
    """One row per (region, image), then a row with the HU shift over all uniform soft tissue; the
    method-noise score and reading go to the node's attributes (saved with the scene)."""
    table = vtk.vtkTable()
    arrays = [vtk.vtkStringArray(), vtk.vtkStringArray(), vtk.vtkStringArray(),
              vtk.vtkDoubleArray(), vtk.vtkDoubleArray(), vtk.vtkIntArray()]
    for array, name in zip(arrays, COLUMNS):
        array.SetName(name)
        table.AddColumn(array)
    rows = [(str(r["region"]), r["box"], r["image"], r["mean"], r["sd"], r["n"])
            for r in report.get("region_stats", [])]
    shift = report.get("hu_shift")
    if shift is not None:
        rows.append(("all uniform soft tissue", "", "HU shift (denoised - input)", shift["overall"], math.nan,
                     shift["voxels"]))
    for row in rows:
        for array, value in zip(arrays, row):
            array.InsertNextValue(value)
    tableNode.SetAndObserveTable(table)
    methodNoise = report["method_noise"]
    tableNode.SetAttribute(nodes.ATTRIBUTE_PREFIX + "method_noise.score", f"{methodNoise['score']:.4f}")
    tableNode.SetAttribute(nodes.ATTRIBUTE_PREFIX + "method_noise.reading", methodNoise["reading"])
    tableNode.SetAttribute(nodes.ATTRIBUTE_PREFIX + "regions_found_automatically",
                           str(report["regions_found_automatically"]).lower())


def regionNoiseTable(inputNode, outputNode, noiseMapNode=None, roiNode=None, tableNode=None) -> tuple:
    """Measure and tabulate; returns (report, tableNode). The report is `trust_report`'s, plus
    "boxes" (the engine `Box`es measured: the ROI's, or those found automatically; empty when no
    uniform region was found). The noise-map rows are input - output, which is what `noiseMapNode`
    holds; the node is only named in the table's attributes. The table is "<input> noise regions",
    reused on the next measurement."""
    from SelfSupCTDenoiseLib.quality.regions import parse_box
    from SelfSupCTDenoiseLib.quality.trust import trust_report

    inputArray = slicer.util.arrayFromVolume(inputNode)
    outputArray = slicer.util.arrayFromVolume(outputNode)
    if inputArray.shape != outputArray.shape:
        raise ValueError(f"'{outputNode.GetName()}' is not on the grid of '{inputNode.GetName()}'.")
    boxes = [roiBox(roiNode, inputNode)] if roiNode is not None else None
    report = trust_report(inputArray, outputArray, inputNode.GetSpacing(), boxes)
    report["boxes"] = [parse_box(text) for text in report["regions"]]
    scene = inputNode.GetScene()
    name = inputNode.GetName() + TABLE_SUFFIX
    if tableNode is None:
        tableNode = scene.GetFirstNodeByName(name)
        if tableNode is None or not tableNode.IsA("vtkMRMLTableNode"):
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    fillTable(tableNode, report)
    for role, node in (("input", inputNode), ("denoised", outputNode), ("noise_map", noiseMapNode),
                       ("roi", roiNode)):
        tableNode.SetAttribute(nodes.ATTRIBUTE_PREFIX + role + "_node_id", node.GetID() if node is not None else "")
    return report, tableNode


def describe(report: Dict[str, Any]) -> str:
    """Plain-language lines for the panel: where it measured, the HU shift, the method-noise reading."""
    lines = []
    if report["boxes"]:
        where = "found automatically (uniform soft tissue)" if report["regions_found_automatically"] else "the ROI"
        lines.append("Regions " + where + ": " + "; ".join(
            f"{i}: z {b.z0}-{b.z1 - 1}, y {b.y0}-{b.y1 - 1}, x {b.x0}-{b.x1 - 1}"
            for i, b in enumerate(report["boxes"], start=1)) + " (voxels)")
    else:
        lines.append("No uniform soft-tissue region found: place a Markups ROI and measure again.")
    shift = report.get("hu_shift")
    if shift is not None:
        lines.append(f"Mean-HU shift in uniform soft tissue: {shift['overall']:+.2f} HU "
                     f"({'within' if shift['within_tolerance'] else 'OUTSIDE'} +/-{shift['tolerance_hu']:.0f} HU).")
    methodNoise = report["method_noise"]
    lines.append(f"Method noise {methodNoise['score']:+.2f}: {methodNoise['reading']}.")
    return "\n".join(lines)


def boxToRoi(box, volumeNode, roiNode=None, name: Optional[str] = None):
    """Show a voxel box as a Markups ROI: the RAS bounds of the box's voxels (for an oblique volume,
    the RAS-aligned box around them), so the automatically found region is visible and movable."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    edge = 0.5 - 1e-3  # just inside the outer voxel faces: measuring the ROI gives the same box back
    corners = np.array([[i, j, k, 1.0] for i in (box.x0 - edge, box.x1 - 1 + edge)
                        for j in (box.y0 - edge, box.y1 - 1 + edge) for k in (box.z0 - edge, box.z1 - 1 + edge)])
    ras = (corners @ slicer.util.arrayFromVTKMatrix(ijkToRas).T)[:, :3]
    if roiNode is None:
        roiNode = volumeNode.GetScene().AddNewNodeByClass("vtkMRMLMarkupsROINode", name or "noise region")
    roiNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    roiNode.SetXYZ(*((ras.min(0) + ras.max(0)) / 2))
    roiNode.SetSize(*(ras.max(0) - ras.min(0)))
    return roiNode
