"""What a CT array in HU looks like: scanner padding outside the field of view, and the check that
refuses what is not CT (numpy only)."""

from __future__ import annotations

from typing import List

import numpy as np

from ..errors import InputError

#: Air in HU (also what scanner padding stands for).
HU_AIR = -1024.0
#: Values below this are scanner padding outside the field of view (-2000, -2048, -3024, -32768):
#: nothing is less dense than air (-1000 HU), and noise in air stays well above it (simulated
#: low-dose data at an eighth of the dose and a sharp kernel reaches -1270 HU).
PADDING_BELOW_HU = -1500.0
#: What CT in HU has: air (around the body, in lungs and bowel; lung is about -850 HU) ...
AIR_BELOW_HU = -700.0
#: ... and soft tissue as the most frequent value between air and bone (fat -100, water 0, organs 40-60).
SOFT_TISSUE_PEAK_HU = (-150.0, 100.0)
#: Least fractions of the field of view's voxels: air (a tightly cropped field of view has little)
#: and soft tissue.
MIN_AIR_FRACTION, MIN_SOFT_TISSUE_FRACTION = 0.002, 0.02
#: HU = stored value - 1024 in most CT series (RescaleIntercept -1024, slope 1).
STORED_VALUE_OFFSET = 1024.0


def padding_mask(array: np.ndarray) -> np.ndarray:
    """The voxels of scanner padding outside the field of view (below `PADDING_BELOW_HU`)."""
    return np.asarray(array) < PADDING_BELOW_HU


def missing_ct_features(values: np.ndarray) -> List[str]:
    """What the HU values of a field of view lack of CT (empty: it looks like CT)."""
    if values.size < 256:
        return [f"too few voxels inside the field of view (the rest is padding, below {PADDING_BELOW_HU:.0f} HU)"]
    missing = []
    if np.count_nonzero(values < AIR_BELOW_HU) < MIN_AIR_FRACTION * values.size:
        missing.append(f"no air (below {AIR_BELOW_HU:.0f} HU)")
    low, high = SOFT_TISSUE_PEAK_HU
    counts, edges = np.histogram(values, bins=80, range=(-500.0, 1500.0))  # between air and dense bone
    peak = edges[np.argmax(counts)] + (edges[1] - edges[0]) / 2
    soft = np.count_nonzero((values >= low) & (values <= high))
    if not counts.any() or soft < MIN_SOFT_TISSUE_FRACTION * values.size or not low <= peak <= high:
        where = f", the most frequent value is {peak:.0f} HU" if counts.any() else ""
        missing.append(f"no soft-tissue peak at {low:.0f} to {high:.0f} HU{where}")
    return missing


def check_ct_array(array: np.ndarray, name: str = "the input") -> None:
    """Refuse what is not a CT volume in HU: wrong shape, NaN/inf, label maps, values without air
    and soft tissue where CT has them (stored values without their rescale get their own hint).
    Scanner padding (`padding_mask`) is left out of the judgement."""
    if array.ndim != 3:
        raise InputError(f"{name} has {array.ndim} dimensions; a 3D (slices, rows, columns) volume is needed.")
    if min(array.shape[1:]) < 16:
        raise InputError(f"{name} has slices of {array.shape[2]}x{array.shape[1]} pixels; at least 16x16 is needed.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name} contains {bad} NaN or infinite voxel(s). Fill them (e.g. with -1024 HU) first.")
    if np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_):
        sample = array[:: max(1, array.shape[0] // 8)]
        values = np.unique(sample)
        if len(values) <= 32 and values.min() >= 0:
            raise InputError(f"{name} looks like a label map or segmentation ({len(values)} distinct values), "
                             "not a CT image. Choose the CT volume itself.")
    sample = np.asarray(array[:: max(1, array.shape[0] // 16)], dtype=np.float32)
    values = sample[~padding_mask(sample)]
    missing = missing_ct_features(values)
    if not missing:
        return
    if not missing_ct_features(values - STORED_VALUE_OFFSET):
        raise InputError(
            f"{name} does not look like CT in Hounsfield units: its values look like stored values, HU + 1024 "
            "(air near 0, soft tissue near 1050). Apply the rescale slope/intercept (HU = stored x slope + "
            "intercept, the intercept usually -1024) first, or load the DICOM series, which applies it.")
    low, median, high = np.percentile(values if values.size else sample, [0.5, 50, 99.5])
    raise InputError(
        f"{name} does not look like CT in Hounsfield units: {'; '.join(missing)} (CT has air near -1000 HU and "
        f"soft tissue near 0-60 HU; here the 0.5/50/99.5% percentiles are {low:.0f}/{median:.0f}/{high:.0f}). "
        "SelfSupCTDenoise is for CT only; for CT stored without its scaling, apply the rescale slope/intercept first.")
