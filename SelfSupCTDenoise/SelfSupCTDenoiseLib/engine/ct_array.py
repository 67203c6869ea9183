"""What a CT array in HU looks like: scanner padding outside the field of view, and the check that
refuses what surely is not CT in HU (numpy only)."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..errors import InputError

#: Air in HU (also what scanner padding stands for).
HU_AIR = -1024.0
#: Values below this are scanner padding outside the field of view (-2000, -2048, -3024, -32768):
#: nothing is less dense than air (-1000 HU), and noise in air stays well above it (simulated
#: low-dose data at an eighth of the dose and a sharp kernel reaches -1270 HU).
PADDING_BELOW_HU = -1500.0
#: What every CT field of view in HU has, crops included: some voxels below this, in fat (-100 HU),
#: lung, air, or the noise of water and muscle. Stored values (HU + 1024), MR, PET, dose maps and
#: normalised images have none. The evidence the check refuses on; nothing else about the values is
#: required (contrast, small fields of view, lung-only or bone-heavy crops, sharp kernels).
BELOW_WATER_HU = -50.0
#: ... as this least fraction of the field of view's voxels: the leanest crops of Testing/data/real_ct
#: (the contrast-filled heart of RIDER, enhanced liver alone of Colorectal-Liver-Metastases) have 0.5 %.
MIN_BELOW_WATER_FRACTION = 0.0005
#: A whole CT field of view also has air and a soft-tissue peak, the most frequent value between air
#: and bone (fat -100, water 0, organs 40-60): not required, only used to recognise stored values.
AIR_BELOW_HU = -700.0
SOFT_TISSUE_PEAK_HU = (-150.0, 100.0)
MIN_AIR_FRACTION, MIN_SOFT_TISSUE_FRACTION = 0.002, 0.02
#: HU = stored value - 1024 in most CT series (RescaleIntercept -1024, slope 1).
STORED_VALUE_OFFSET = 1024.0
#: How a refusal names the way past it (the panel has a check box of the same meaning).
OVERRIDE_HINT = "if it is CT in HU all the same, turn the CT check off (--no-ct-check; 'ct_check' false)"


def padding_mask(array: np.ndarray) -> np.ndarray:
    """The voxels of scanner padding outside the field of view (below `PADDING_BELOW_HU`)."""
    return np.asarray(array) < PADDING_BELOW_HU


def missing_ct_features(values: np.ndarray) -> List[str]:
    """What the HU values lack of a whole CT field of view (air, a soft-tissue peak); empty: they
    look like one. Used to recognise stored values (HU + 1024), never to refuse CT in HU."""
    missing = []
    if np.count_nonzero(values < AIR_BELOW_HU) < MIN_AIR_FRACTION * values.size:
        missing.append(f"no air (below {AIR_BELOW_HU:.0f} HU)")
    low, high = SOFT_TISSUE_PEAK_HU
    counts, edges = np.histogram(values, bins=80, range=(-500.0, 1500.0))  # between air and dense bone
    peak = edges[np.argmax(counts)] + (edges[1] - edges[0]) / 2
    soft = np.count_nonzero((values >= low) & (values <= high))
    if not counts.any() or soft < MIN_SOFT_TISSUE_FRACTION * values.size or not low <= peak <= high:
        missing.append(f"no soft-tissue peak at {low:.0f} to {high:.0f} HU")
    return missing


def not_ct_evidence(values: np.ndarray) -> Optional[str]:
    """Why HU values (padding left out) surely are not CT in HU, or None."""
    if values.size < 256:
        return f"too few voxels inside the field of view (the rest is padding, below {PADDING_BELOW_HU:.0f} HU)"
    below = np.count_nonzero(values < BELOW_WATER_HU)
    if below < MIN_BELOW_WATER_FRACTION * values.size:
        return (f"{below / values.size:.3%} of its voxels lie below {BELOW_WATER_HU:.0f} HU, where every CT in HU has "
                "fat, lung, air or the noise of water")
    return None


def overridden_refusal(array: np.ndarray, name: str = "the input") -> Optional[str]:
    """What the CT check would have said of a volume it was told not to check (None: it passes),
    for the provenance of the output."""
    try:
        check_ct_array(array, name)
    except InputError as exc:
        return str(exc)
    return None


def check_ct_array(array: np.ndarray, name: str = "the input", ct_check: bool = True) -> None:
    """Refuse what cannot be denoised (wrong shape, NaN/inf) and, with `ct_check`, what surely is not
    a CT volume in HU: label maps, and values without anything below water (`not_ct_evidence`;
    stored values without their rescale get their own hint). Scanner padding (`padding_mask`) is
    left out of the judgement."""
    if array.ndim != 3:
        raise InputError(f"{name} has {array.ndim} dimensions; a 3D (slices, rows, columns) volume is needed.")
    if min(array.shape[1:]) < 16:
        raise InputError(f"{name} has slices of {array.shape[2]}x{array.shape[1]} pixels; at least 16x16 is needed.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name} contains {bad} NaN or infinite voxel(s). Fill them (e.g. with -1024 HU) first.")
    if not ct_check:
        return
    if np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_):
        sample = array[:: max(1, array.shape[0] // 8)]
        values = np.unique(sample)
        if len(values) <= 32 and values.min() >= 0:
            raise InputError(f"{name} looks like a label map or segmentation ({len(values)} distinct values), "
                             f"not a CT image. Choose the CT volume itself; {OVERRIDE_HINT}.")
    sample = np.asarray(array[:: max(1, array.shape[0] // 16)], dtype=np.float32)
    values = sample[~padding_mask(sample)]
    evidence = not_ct_evidence(values)
    if evidence is None:
        return
    if values.size >= 256 and not missing_ct_features(values - STORED_VALUE_OFFSET):
        raise InputError(
            f"{name} does not look like CT in Hounsfield units: its values look like stored values, HU + 1024 "
            "(air near 0, soft tissue near 1050). Apply the rescale slope/intercept (HU = stored x slope + "
            "intercept, the intercept usually -1024) first, or load the DICOM series, which applies it.")
    low, median, high = np.percentile(values if values.size else sample, [0.5, 50, 99.5])
    raise InputError(
        f"{name} does not look like CT in Hounsfield units: {evidence} (here the 0.5/50/99.5% percentiles are "
        f"{low:.0f}/{median:.0f}/{high:.0f} HU). SelfSupCTDenoise is for CT only (not MR, PET or normalised "
        f"images); for CT stored without its scaling, apply the rescale slope/intercept first; {OVERRIDE_HINT}.")
