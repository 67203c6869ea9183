"""Strength after a run, without adapting again.

The worker always denoises at strength 1 and hands the result back unrounded (float32); the job
keeps it and blends the requested strength here with the engine's `strength_blend` (output =
X - s * (X - f(X))) and `cast_like_input`, as the command line does: the same voxels. Moving
the strength afterwards re-blends the same result: no new adaptation, the same model output.
The noise map is always what was removed: input - output. A target noise level picks the strength
here too, with the engine's `strength_for_target` on the same voxels as the command line.
"""

import numpy as np

import slicer

from . import nodes


def blendArrays(inputArray: np.ndarray, fullStrength: np.ndarray, strength: float) -> tuple:
    """(output in the input's dtype, noise map float32 = input - output). Strength 0 gives the input
    exactly, 1 the full result exactly (integer inputs stay integers, rounded, never clipped)."""
    from SelfSupCTDenoiseLib.engine.strength import cast_like_input, strength_blend

    if inputArray.shape != fullStrength.shape:
        raise ValueError(f"The kept result has shape {fullStrength.shape}, the input {inputArray.shape}: "
                         "run Denoise again.")
    output = cast_like_input(strength_blend(inputArray, fullStrength, strength), inputArray.dtype)
    noise = inputArray.astype(np.float32) - output.astype(np.float32)
    return output, noise


def targetStrength(inputArray: np.ndarray, fullStrength: np.ndarray, targetNoise: float, run: dict) -> dict:
    """The strength that leaves `targetNoise` HU and its provenance record (run["target_noise"])."""
    from SelfSupCTDenoiseLib.engine.target_noise import strength_for_target

    return strength_for_target(inputArray, fullStrength, targetNoise, run.get("estimated_noise_std_hu"))


def describeTarget(record: dict) -> str:
    from SelfSupCTDenoiseLib.engine.target_noise import describe_target

    return describe_target(record)


def recordStrength(node, strength: float) -> None:
    """Keep the node's provenance true to its voxels: the strength field as the engine writes it; a
    strength set by hand replaces the target noise level (run.target_noise says what it had chosen)."""
    from SelfSupCTDenoiseLib.files.provenance_io import to_nrrd_fields

    fields = {"parameters": {"strength": float(strength), "target_noise": None}}
    for key, value in to_nrrd_fields(fields, nodes.ATTRIBUTE_PREFIX).items():
        node.SetAttribute(key, value)


def applyStrength(inputNode, outputNode, noiseMapNode, fullStrength: np.ndarray, strength: float) -> None:
    """Replace the voxels of `outputNode` (and `noiseMapNode`, if given) with the blend at `strength`,
    in one scene update. Geometry and display (the noise map's window) are left as they are."""
    output, noise = blendArrays(slicer.util.arrayFromVolume(inputNode), fullStrength, strength)
    scene = outputNode.GetScene()
    scene.StartState(scene.BatchProcessState)
    try:
        slicer.util.updateVolumeFromArray(outputNode, output)
        recordStrength(outputNode, strength)
        if noiseMapNode is not None:
            slicer.util.updateVolumeFromArray(noiseMapNode, noise)
            recordStrength(noiseMapNode, strength)
    finally:
        scene.EndState(scene.BatchProcessState)
