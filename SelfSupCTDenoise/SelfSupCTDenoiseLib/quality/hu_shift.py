"""Mean-HU change in uniform tissue: denoising must not shift tissue values."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Union

import numpy as np

from ..errors import InputError
from .regions import Box

def hu_shift(reference_hu: np.ndarray, output_hu: np.ndarray, regions: Union[Sequence[Box], np.ndarray],
             tolerance_hu: float = 2.0) -> Dict[str, Any]:
    """Mean-HU change (output - reference) in uniform regions: boxes, or a boolean mask.

    `reference_hu` is the LDCT input (does denoising shift tissue values?) or, in a benchmark, the
    NDCT. The change measured in a region includes the mean of the noise removed there, about
    noise SD / sqrt(effective voxel count): a few HU for one 15 mm box of 30 HU correlated noise, so
    judge "overall" (all voxels together) and prefer a `uniform_tissue_mask`, over which this noise
    term is ~0.1 HU. `within_tolerance` is |overall| <= tolerance_hu (default 2 HU).
    Returns {"overall", "per_box" (boxes only), "max_abs", "voxels", "tolerance_hu",
    "within_tolerance", "regions"}.
    """
    if reference_hu.shape != output_hu.shape:
        raise InputError(f"Reference {reference_hu.shape} and output {output_hu.shape} differ in shape.")
    if isinstance(regions, np.ndarray):
        if regions.shape != reference_hu.shape or regions.dtype != bool:
            raise InputError("A region mask must be a boolean array of the volume's shape.")
        if not regions.any():
            raise InputError("The region mask is empty: no uniform soft tissue to measure the HU shift in.")
        total, voxels = 0.0, int(regions.sum())
        for z in np.flatnonzero(regions.any(axis=(1, 2))):  # slice by slice: no full-volume float64 copy
            m = regions[z]
            total += float(np.sum(np.asarray(output_hu[z][m], np.float64) - np.asarray(reference_hu[z][m], np.float64)))
        overall = total / voxels
        return {"overall": overall, "per_box": [], "max_abs": abs(overall), "voxels": voxels,
                "tolerance_hu": float(tolerance_hu), "within_tolerance": bool(abs(overall) <= tolerance_hu),
                "regions": "uniform soft-tissue mask"}
    if not regions:
        raise InputError("No region to measure the HU shift in (no uniform soft-tissue region was found; "
                         "give one).")
    shifts, counts = [], []
    for box in regions:
        box.check_fits(reference_hu.shape)
        diff = np.asarray(output_hu[box.slices], np.float64) - np.asarray(reference_hu[box.slices], np.float64)
        shifts.append(float(diff.mean()))
        counts.append(diff.size)
    overall = float(np.average(shifts, weights=counts))
    return {"overall": overall, "per_box": shifts, "max_abs": float(np.max(np.abs(shifts))),
            "voxels": int(sum(counts)), "tolerance_hu": float(tolerance_hu),
            "within_tolerance": bool(abs(overall) <= tolerance_hu), "regions": [str(b) for b in regions]}

