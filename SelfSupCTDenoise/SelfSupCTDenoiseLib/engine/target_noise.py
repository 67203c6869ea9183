"""A target noise level: the strength at which the result's noise SD in uniform soft tissue is the
one asked for (in HU), as vendors' denoisers are chosen by the noise they leave (numpy + scipy only:
the Slicer panel uses it on the kept full-strength result).

At strength s the output is (1 - s) * X + s * f(X) (strength.py), so over any set of voxels its
variance about a local mean is exactly the quadratic (1 - s)^2 a + s^2 b + 2 s (1 - s) c, with a and
b the variances of the input and of the full result and c their covariance. These three are measured
once on the uniform part of the run's own noise region (noise_level.flat_soft_tissue_mask of evenly
spaced slices, less the places where the full result shows structure), each voxel taken about the
local mean of that region (structure slower than the window is left out, as a uniform-region SD
leaves it out), and the quadratic is solved for the target: no model of the denoiser's residual is
assumed.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from .arrays import evenly_spaced
from .ct_array import PADDING_BELOW_HU
from .noise_level import flat_soft_tissue_mask

#: Slices on which the noise is measured, and the window (Gaussian sigma, pixels) of the local mean
#: each voxel is taken about: wide, because a narrower one also takes away the noise's low
#: frequencies (at 6 px a fifth of the SD of phantom noise correlated over 2 px, at 12 px a tenth),
#: and only the uniform tissue enters it.
MEASURE_SLICES, LOCAL_MEAN_SIGMA_PX = 16, 12.0
_MIN_VOXELS = 64
#: Window (pixels) of the local SD that picks the uniform part of the soft tissue, and how far above
#: its lowest decile a voxel's local SD may be.
UNIFORM_WINDOW_PX, UNIFORM_SD_FACTOR = 9, 2.0


def _about_local_mean(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """image minus its local mean over `mask` only (normalised convolution: other tissue never mixes in)."""
    weight = ndimage.gaussian_filter(mask.astype(np.float32), LOCAL_MEAN_SIGMA_PX)
    mean = ndimage.gaussian_filter(np.where(mask, image, 0).astype(np.float32), LOCAL_MEAN_SIGMA_PX)
    return image - mean / np.maximum(weight, 1e-6)


def _uniform(tissue: np.ndarray, full_slice: np.ndarray) -> np.ndarray:
    """The flattest part of `tissue`: where the full result's local SD is at most UNIFORM_SD_FACTOR
    times its lowest decile there (organ texture, vessels and borders out; the full result shows
    them with little noise); the whole slice where there is too little tissue to judge."""
    if tissue.sum() < _MIN_VOXELS:
        return full_slice > PADDING_BELOW_HU
    mean = ndimage.uniform_filter(full_slice, UNIFORM_WINDOW_PX)
    local_sd = np.sqrt(np.maximum(ndimage.uniform_filter(full_slice * full_slice, UNIFORM_WINDOW_PX) - mean * mean, 0))
    flat = tissue & (local_sd <= UNIFORM_SD_FACTOR * np.percentile(local_sd[tissue], 10))
    return flat if flat.sum() >= _MIN_VOXELS else tissue


def blend_moments(input_hu: np.ndarray, full_hu: np.ndarray) -> Tuple[float, float, float]:
    """(a, b, c): variance of the input, of the full-strength result, and their covariance (HU^2),
    about the local mean of the uniform soft tissue of up to MEASURE_SLICES evenly spaced slices (all
    but the padding where a slice has too little of it). (z, y, x) HU volumes, the input as read."""
    sums, count = np.zeros(3), 0
    for z in evenly_spaced(len(input_hu), MEASURE_SLICES):
        x = np.asarray(input_hu[z], np.float32)
        f = np.asarray(full_hu[z], np.float32)
        mask = _uniform(flat_soft_tissue_mask(x), f)
        dx, df = _about_local_mean(x, mask)[mask], _about_local_mean(f, mask)[mask]
        sums += (float(np.dot(dx, dx)), float(np.dot(df, df)), float(np.dot(dx, df)))
        count += int(mask.sum())
    a, b, c = sums / max(count, 1)
    return float(a), float(b), float(c)


def strength_for_target(input_hu: np.ndarray, full_hu: np.ndarray, target_hu: float,
                        estimated_noise_hu: Optional[float] = None) -> Dict[str, Any]:
    """The strength whose output has noise SD `target_hu` in the uniform soft tissue (see module
    doc), and the record the provenance keeps (run["target_noise"]): the target, the run's estimate
    of the input noise (`estimated_noise_hu`, noise_level.estimate_noise; kept beside the SD measured
    here, which decides: the estimate errs by up to ~11 % on CT and more on other textures), the SDs
    measured on the input and on the full result, the strength chosen, the SD expected at it and,
    where the target cannot be met, why (`note`)."""
    a, b, c = blend_moments(input_hu, full_hu)
    removed = a + b - 2 * c  # variance of what the model removed: the quadratic's curvature
    target = float(target_hu) ** 2

    def sd(s: float) -> float:
        return math.sqrt(max((1 - s) ** 2 * a + s * s * b + 2 * s * (1 - s) * c, 0.0))

    # The noise falls from s = 0 to the quadratic's lowest point (s = 1 unless the model adds noise).
    lowest = min(1.0, max(0.0, (a - c) / removed)) if removed > 0 else 0.0
    note = None
    if target >= a:
        strength = 0.0
        note = f"the input's noise ({sd(0.0):.1f} HU) is at or below the target: strength 0, the input as it is"
    elif target <= sd(lowest) ** 2:
        strength = lowest
        note = (f"the model leaves {sd(lowest):.1f} HU at strength {lowest:.2f}, more than the target: "
                "the strength that removes the most")
    else:  # the smaller root of sd(s)^2 = target: between 0 and `lowest`
        strength = ((a - c) - math.sqrt(max((a - c) ** 2 - removed * (a - target), 0.0))) / removed
        strength = min(max(strength, 0.0), lowest)
    strength = round(strength, 4)
    known = estimated_noise_hu is not None and math.isfinite(estimated_noise_hu)
    return {"requested_hu": float(target_hu), "estimated_input_hu": round(estimated_noise_hu, 2) if known else None,
            "input_sd_hu": round(sd(0.0), 2), "full_strength_sd_hu": round(sd(1.0), 2),
            "strength": strength, "expected_sd_hu": round(sd(strength), 2), "note": note}


def describe_target(record: Optional[Dict[str, Any]]) -> str:
    """One line for people: the target, the strength chosen and why (empty without a target)."""
    if not record:
        return ""
    line = (f"target noise {record['requested_hu']:g} HU: strength {record['strength']:.2f} "
            f"(expected {record['expected_sd_hu']:.1f} HU in uniform tissue)")
    return line + (f"; {record['note']}" if record.get("note") else "")
