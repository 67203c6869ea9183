"""Low-contrast lesions with known truth: discs inserted into a normal-dose slice before the low
dose is simulated, so that the projection-domain noise (lowdose.py) goes through them.

A disc of diameter D (mm) and contrast C (HU) adds C times the fraction of each pixel it covers
(partial volume, supersampled), on top of the local soft tissue. Its *core* is the pixels it covers
entirely: there the inserted value is C exactly, which is where contrast is measured. Positions are
drawn in uniform-ish soft tissue (`noise_level.flat_soft_tissue_mask`, fat left out), the whole
disc in soft tissue, each disc far enough from the others that no disc lies in another one's ROI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..engine.noise_level import flat_soft_tissue_mask, soft_tissue_mask
from ..errors import InputError
from ..quality.regions import UNIFORM_TISSUE_HU

#: Samples per pixel side for the covered fraction (64 samples per pixel: fraction to 1/64).
SUPERSAMPLE = 8
#: Soft tissue kept around each disc (mm) and between a ROI and the next disc.
MARGIN_MM = 1.0


@dataclass(frozen=True)
class Lesion:
    """One disc: centre (pixel indices of its slice), diameter (mm), contrast (HU)."""

    y: int
    x: int
    diameter_mm: float
    contrast_hu: float

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def disc_fraction(shape: Sequence[int], centre_yx: Sequence[float], diameter_mm: float,
                  spacing_yx: Sequence[float], supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction (0..1, float32) of each pixel of a `shape` slice covered by the disc."""
    if not diameter_mm > 0:
        raise InputError(f"Lesion diameter must be > 0 mm, got {diameter_mm}.")
    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    radius = diameter_mm / 2.0
    out = np.zeros(tuple(int(n) for n in shape[:2]), np.float32)
    # only the pixels the disc can reach
    y0, y1 = int(np.floor(centre_yx[0] - radius / sy - 1)), int(np.ceil(centre_yx[0] + radius / sy + 1)) + 1
    x0, x1 = int(np.floor(centre_yx[1] - radius / sx - 1)), int(np.ceil(centre_yx[1] + radius / sx + 1)) + 1
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, out.shape[0]), min(x1, out.shape[1])
    if y0 >= y1 or x0 >= x1:
        return out
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5  # sub-pixel sample positions
    yy = (np.arange(y0, y1)[:, None] + offsets[None, :] - centre_yx[0]) * sy      # (rows, s)
    xx = (np.arange(x0, x1)[:, None] + offsets[None, :] - centre_yx[1]) * sx      # (cols, s)
    inside = yy[:, None, :, None] ** 2 + xx[None, :, None, :] ** 2 <= radius ** 2  # (rows, cols, s, s)
    out[y0:y1, x0:x1] = inside.mean(axis=(2, 3))
    return out


def core_mask(fraction: np.ndarray) -> np.ndarray:
    """Pixels entirely inside the disc; the most covered pixel when none is (a disc under a pixel)."""
    mask = fraction >= 1.0
    if not mask.any():
        mask = fraction == fraction.max()
    return mask


def insert_lesions(slice_hu: np.ndarray, lesions: Sequence[Lesion], spacing_yx: Sequence[float]) -> np.ndarray:
    """A float32 copy of the slice with every disc added (C x covered fraction)."""
    out = np.array(slice_hu, dtype=np.float32, copy=True)
    for lesion in lesions:
        out += np.float32(lesion.contrast_hu) * disc_fraction(out.shape, (lesion.y, lesion.x), lesion.diameter_mm,
                                                              spacing_yx)
    return out


def place_lesions(slice_hu: np.ndarray, spacing_yx: Sequence[float], conditions: Sequence[Tuple[float, float]],
                  roi_half_mm: Callable[[float], float], rng: np.random.Generator,
                  allowed: Optional[np.ndarray] = None, hu_range: Tuple[float, float] = UNIFORM_TISSUE_HU) -> List[Lesion]:
    """Positions for discs of `conditions` [(diameter mm, contrast HU), ...] on one slice.

    Each centre lies in flat soft tissue (local mean in `hu_range`: fat excluded), the disc plus
    `MARGIN_MM` in that tissue, its square ROI
    of half side `roi_half_mm(diameter)` inside the slice (and inside `allowed` when given), and no
    disc within another disc's ROI. Larger discs are placed first; raises InputError when they do
    not all fit."""
    slice_hu = np.asarray(slice_hu, np.float32)
    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    # soft tissue proper: noise_level's mask (air and bone out) without fat
    tissue = soft_tissue_mask(slice_hu)
    local = ndimage.uniform_filter(slice_hu, size=5)
    tissue &= (local >= hu_range[0]) & (local <= hu_range[1])
    flat = flat_soft_tissue_mask(slice_hu, tissue)
    # distance (mm) from each tissue pixel to the nearest pixel that is not
    depth = ndimage.distance_transform_edt(tissue, sampling=(sy, sx))
    placed: List[Lesion] = []
    order = sorted(range(len(conditions)), key=lambda i: -conditions[i][0])
    chosen: Dict[int, Lesion] = {}
    for i in order:
        diameter, contrast = conditions[i]
        radius, half = diameter / 2.0, roi_half_mm(diameter)
        hy, hx = int(np.ceil(half / sy)), int(np.ceil(half / sx))
        ok = flat & (depth >= radius + MARGIN_MM)
        inner = np.zeros_like(ok)
        inner[hy:slice_hu.shape[0] - hy, hx:slice_hu.shape[1] - hx] = True
        ok &= inner
        if allowed is not None:
            ok &= allowed
        for other in placed:  # neither disc in the other's ROI: the ROIs are squares, so per axis
            other_hy, other_hx = (int(np.ceil(roi_half_mm(other.diameter_mm) / s)) for s in (sy, sx))
            reach = other.diameter_mm / 2.0 + MARGIN_MM
            # + 1 px: a partly covered pixel reaches up to ~0.7 px beyond the radius
            ky = max(hy + reach / sy, other_hy + (radius + MARGIN_MM) / sy) + 1
            kx = max(hx + reach / sx, other_hx + (radius + MARGIN_MM) / sx) + 1
            ok[max(0, int(np.floor(other.y - ky))):int(np.ceil(other.y + ky)) + 1,
               max(0, int(np.floor(other.x - kx))):int(np.ceil(other.x + kx)) + 1] = False
        candidates = np.flatnonzero(ok)
        if candidates.size == 0:
            raise InputError(f"No room for a {diameter:g} mm lesion in the soft tissue of this slice "
                             f"({len(placed)} of {len(conditions)} placed).")
        y, x = np.unravel_index(candidates[rng.integers(candidates.size)], ok.shape)
        chosen[i] = Lesion(int(y), int(x), float(diameter), float(contrast))
        placed.append(chosen[i])
    return [chosen[i] for i in range(len(conditions))]


def roi(image: np.ndarray, centre_yx: Sequence[int], half_px: Sequence[int]) -> np.ndarray:
    """The (2 hy + 1, 2 hx + 1) square around a pixel of a 2D image (must lie inside)."""
    (cy, cx), (hy, hx) = centre_yx, half_px
    if cy - hy < 0 or cx - hx < 0 or cy + hy >= image.shape[0] or cx + hx >= image.shape[1]:
        raise InputError(f"ROI around ({cy}, {cx}) leaves the {image.shape} image.")
    return image[cy - hy:cy + hy + 1, cx - hx:cx + hx + 1]
