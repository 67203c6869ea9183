"""Checks that a denoised CT can be trusted, and the strength control (numpy + scipy.ndimage only).

Conventions: arrays are (z, y, x) in HU; spacings are (x, y, z) in mm, as SimpleITK gives them;
a `Box` indexes voxels (z, y, x), start inclusive, stop exclusive.

- `strength_blend`, `STRENGTH_LEVELS`: output = X - s * (X - f(X)); strength 0 returns the input.
- `cast_like_input`: integer inputs keep their dtype (rounded, clipped only to the dtype's range).
- `Box`, `parse_box`, `box_from_mm`, `box_around`: regions given in voxels or in mm.
- `region_stats`, `compare_regions`: mean / SD / count of a region (before/after tables).
- `find_uniform_regions`: uniform soft-tissue boxes found automatically, for noise SD and HU shift.
- `uniform_tissue_mask`, `hu_shift`: mean-HU change in uniform tissue (denoising must not shift it).
- `method_noise_score`: does the removed part (input - output) contain anatomy?
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from .errors import InputError, SelfSupCTDenoiseError

# ---------------------------------------------------------------------------------------------
# Strength

#: Named strengths, like the low/medium/high levels of vendor deep-learning reconstructions.
#: At strength s the output keeps (1 - s) of the removed noise, so its noise SD is about
#: (1 - s) * SD(input) + s * SD(full result) in uniform regions: "low" removes about half the noise
#: (a familiar, grainier texture), "medium" three quarters, "high" everything the model removes.
STRENGTH_LEVELS: Dict[str, float] = {"low": 0.5, "medium": 0.75, "high": 1.0}


def resolve_strength(value: Union[str, float]) -> float:
    """A strength in [0, 1] from a number, a numeric string or a level name of `STRENGTH_LEVELS`."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in STRENGTH_LEVELS:
            return float(STRENGTH_LEVELS[key])
        try:
            value = float(key)
        except ValueError:
            raise InputError(f"Strength {value!r} is neither a number in [0, 1] nor one of "
                             f"{', '.join(STRENGTH_LEVELS)}.") from None
    strength = float(value)
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"Strength {strength} is outside [0, 1].")
    return strength


#: Slices per piece where a whole volume is processed piecewise, so that temporaries stay small.
SLAB_SLICES = 8


def slabs(array: np.ndarray) -> List[Any]:
    """Indices that walk `array` along its first axis `SLAB_SLICES` at a time (all of a 0-d array)."""
    if np.ndim(array) == 0:
        return [...]
    return [slice(start, start + SLAB_SLICES) for start in range(0, len(array), SLAB_SLICES)]


def all_finite(array: np.ndarray) -> bool:
    """`np.isfinite(array).all()` without a volume-sized temporary."""
    return all(np.isfinite(array[part]).all() for part in slabs(array))


def strength_blend(input_hu: np.ndarray, full_denoised: np.ndarray, strength: Union[str, float],
                   out: Optional[np.ndarray] = None) -> np.ndarray:
    """Output = X - s * (X - f(X)); s = 0 is the input bitwise, s = 1 the full result.

    A new array: float32 (float64 inputs stay float64); integer inputs are blended in float32, which
    holds every int16 exactly: use `cast_like_input` to go back to the input's dtype. With `out` (which
    may be `full_denoised` itself) the result is written there, in that dtype, slab by slab.
    """
    s = resolve_strength(strength)
    if input_hu.shape != full_denoised.shape:
        raise InputError(f"Input {input_hu.shape} and denoised {full_denoised.shape} differ in shape.")
    if out is None:
        out = np.empty(input_hu.shape, input_hu.dtype if input_hu.dtype == np.float64 else np.float32)
    dtype = out.dtype
    for part in slabs(out):
        # The end points are copies, not arithmetic, so that they are exact (no -0.0, NaN or rounding).
        if s == 1.0:
            out[part] = full_denoised[part]
            continue
        blended = np.array(input_hu[part], dtype=dtype, copy=True)
        if s != 0.0:
            removed = blended - full_denoised[part].astype(dtype, copy=False)
            removed *= dtype.type(s)
            blended -= removed
        out[part] = blended
    return out


def cast_like_input(array: np.ndarray, input_dtype: Union[np.dtype, type, str]) -> np.ndarray:
    """Cast a float result to the input's dtype: integers are rounded and clipped to the dtype's
    range only (air at -1024 and bone stay as they are), slab by slab; floats are cast (float32 stays
    a view-free copy only when needed)."""
    dtype, array = np.dtype(input_dtype), np.asarray(array)
    if np.issubdtype(dtype, np.integer):
        if not all_finite(array):
            raise SelfSupCTDenoiseError("The result contains NaN or infinite values; nothing was written.")
        info = np.iinfo(dtype)
        out = np.empty(array.shape, dtype)
        for part in slabs(array):
            rounded = np.rint(array[part])
            np.clip(rounded, info.min, info.max, out=rounded)
            out[part] = rounded
        return out
    if np.issubdtype(dtype, np.floating):
        return array.astype(dtype, copy=False)
    raise InputError(f"Cannot write a CT result as {dtype}: expected an integer or float type.")


# ---------------------------------------------------------------------------------------------
# Regions


@dataclass(frozen=True)
class Box:
    """Voxel box [z0, z1) x [y0, y1) x [x0, x1) in array (z, y, x) indices."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        for name in ("z0", "z1", "y0", "y1", "x0", "x1"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if min(self.z0, self.y0, self.x0) < 0 or self.z1 <= self.z0 or self.y1 <= self.y0 or self.x1 <= self.x0:
            raise InputError(f"Empty or negative region {self}: need 0 <= start < stop on every axis.")

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        return slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def center_index_xyz(self) -> Tuple[float, float, float]:
        """Centre as a continuous (i, j, k) = (x, y, z) index, e.g. for a Slicer ROI."""
        return (self.x0 + self.x1 - 1) / 2, (self.y0 + self.y1 - 1) / 2, (self.z0 + self.z1 - 1) / 2

    def size_mm(self, spacing_xyz: Sequence[float]) -> Tuple[float, float, float]:
        """Extent (x, y, z) in mm."""
        nz, ny, nx = self.shape
        return nx * spacing_xyz[0], ny * spacing_xyz[1], nz * spacing_xyz[2]

    def fits(self, shape: Sequence[int]) -> bool:
        return self.z1 <= shape[0] and self.y1 <= shape[1] and self.x1 <= shape[2]

    def check_fits(self, shape: Sequence[int]) -> "Box":
        if not self.fits(shape):
            raise InputError(f"Region {self} lies outside the volume of {shape[0]}x{shape[1]}x{shape[2]} "
                             "(z x y x x) voxels.")
        return self

    def overlaps(self, other: "Box") -> bool:
        return (self.z0 < other.z1 and other.z0 < self.z1 and self.y0 < other.y1 and other.y0 < self.y1
                and self.x0 < other.x1 and other.x0 < self.x1)

    def __str__(self) -> str:
        return f"{self.z0}:{self.z1},{self.y0}:{self.y1},{self.x0}:{self.x1}"

    def to_dict(self) -> Dict[str, int]:
        return {k: getattr(self, k) for k in ("z0", "z1", "y0", "y1", "x0", "x1")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Box":
        return cls(**{k: int(data[k]) for k in ("z0", "z1", "y0", "y1", "x0", "x1")})


def box_from_mm(lo_zyx_mm: Sequence[float], hi_zyx_mm: Sequence[float], spacing_xyz: Sequence[float]) -> Box:
    """The voxels whose centres lie in [lo, hi) mm, measured from the centre of voxel (0, 0, 0) along
    the image's own axes (z, y, x order, like the box; not patient LPS/RAS coordinates)."""
    step = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    if any(s <= 0 for s in step):
        raise InputError(f"Spacing must be positive, got {tuple(spacing_xyz)}.")
    # round before ceil so that a bound exactly on a voxel centre is not moved by float error
    lo = [max(0, math.ceil(round(v / s, 6))) for v, s in zip(lo_zyx_mm, step)]
    hi = [math.ceil(round(v / s, 6)) for v, s in zip(hi_zyx_mm, step)]
    return Box(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])


def box_around(center_zyx: Sequence[float], size_mm: float, spacing_xyz: Sequence[float],
               shape: Optional[Sequence[int]] = None) -> Box:
    """A box of about `size_mm` per side (at least one voxel) centred on a (z, y, x) index, clipped to
    `shape` when given."""
    sizes = [max(1, int(round(size_mm / s))) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    bounds = []
    for axis, (c, n) in enumerate(zip(center_zyx, sizes)):
        start = math.floor(c - (n - 1) / 2 + 0.5)  # round half up, the same on every axis
        stop = start + n
        if shape is not None:
            start, stop = max(0, start), min(int(shape[axis]), stop)
        bounds += [max(0, start), stop]
    return Box(*bounds)


_BOX_RE = re.compile(r"^\s*([-+0-9.eE]+):([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+):([-+0-9.eE]+)\s*,"
                     r"\s*([-+0-9.eE]+):([-+0-9.eE]+)\s*(mm)?\s*$")


def parse_box(text: str, spacing_xyz: Optional[Sequence[float]] = None) -> Box:
    """Parse a CLI region: "z0:z1,y0:y1,x0:x1" in voxel indices (stop exclusive), or the same
    followed by "mm" for millimetres from the first voxel's centre along the image axes
    (see `box_from_mm`; needs `spacing_xyz`)."""
    match = _BOX_RE.match(text)
    if not match:
        raise InputError(f"Cannot read the region {text!r}: write z0:z1,y0:y1,x0:x1 in voxels "
                         "(e.g. 10:14,200:230,180:210) or append mm (e.g. 25:35,140:161,126:147mm).")
    numbers = match.groups()[:6]
    if match.group(7):
        if spacing_xyz is None:
            raise InputError("A region in mm needs the image spacing.")
        values = [float(v) for v in numbers]
        return box_from_mm(values[0::2], values[1::2], spacing_xyz)
    try:
        values = [int(v) for v in numbers]
    except ValueError:
        raise InputError(f"Voxel regions take whole numbers; got {text!r} (append mm for millimetres).") from None
    return Box(*values)


def region_stats(volume: np.ndarray, box: Box) -> Dict[str, float]:
    """Mean, sample SD (ddof=1) and voxel count of `volume` in `box`, accumulated in float64."""
    box.check_fits(volume.shape)
    values = np.asarray(volume[box.slices], dtype=np.float64)
    n = values.size
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if n > 1 else 0.0, "n": int(n)}


def compare_regions(images: Mapping[str, np.ndarray], boxes: Sequence[Box]) -> List[Dict[str, Any]]:
    """One row per (region, image), e.g. images = {"LDCT": x, "denoised": y, "noise map": x - y}:
    {"region": 1-based index, "box": "z0:z1,...", "image": name, "mean", "sd", "n"}."""
    rows = []
    for index, box in enumerate(boxes, start=1):
        for name, image in images.items():
            rows.append({"region": index, "box": str(box), "image": name, **region_stats(image, box)})
    return rows


# ---------------------------------------------------------------------------------------------
# Uniform regions

#: Mean HU accepted for a "uniform soft-tissue" region: fluid (0-20), muscle (~40), liver and spleen
#: (50-70, up to ~150 enhanced). Fat (-120..-60) is left out on purpose: it is flat too, but the
#: organs are where users judge noise and HU fidelity, and a bound inside fat's range would cut it.
SOFT_TISSUE_HU = (-30.0, 150.0)
#: A candidate is uniform when its local SD is at most this factor times the 5th percentile of the
#: local SD over all candidates: it is as flat as the flattest tissue of this volume, i.e. its SD is
#: (close to) the noise alone. Fewer than n regions are returned when fewer are that flat.
UNIFORM_SD_FACTOR = 1.5
#: Voxels below this HU (after block averaging) are outside the body (air, and the lungs until the
#: holes are filled).
BODY_HU = -500.0


def _block_sums(volume: np.ndarray, block: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Sums of x and x^2 over non-overlapping blocks, slab by slab (float64, little memory)."""
    bz, by, bx = block
    nz, ny, nx = (s // b for s, b in zip(volume.shape, block))
    s1 = np.empty((nz, ny, nx))
    s2 = np.empty((nz, ny, nx))
    for k in range(nz):
        slab = np.asarray(volume[k * bz:(k + 1) * bz, : ny * by, : nx * bx], dtype=np.float64)
        slab = slab.reshape(bz, ny, by, nx, bx)
        s1[k] = slab.sum(axis=(0, 2, 4))
        s2[k] = np.square(slab).sum(axis=(0, 2, 4))
    return s1, s2


def _window_sum(a: np.ndarray, size: Tuple[int, int, int]) -> np.ndarray:
    """Sum over every full window of `size` (a "valid" box filter) through an integral image."""
    c = np.pad(a, [(1, 0)] * 3).cumsum(0).cumsum(1).cumsum(2)
    kz, ky, kx = size
    return (c[kz:, ky:, kx:] - c[:-kz, ky:, kx:] - c[kz:, :-ky, kx:] - c[kz:, ky:, :-kx]
            + c[:-kz, :-ky, kx:] + c[:-kz, ky:, :-kx] + c[kz:, :-ky, :-kx] - c[:-kz, :-ky, :-kx])


def _body_blocks(block_mean: np.ndarray) -> np.ndarray:
    """Largest connected region above BODY_HU, holes (lungs, bowel gas) filled slice by slice."""
    labels, count = ndimage.label(block_mean > BODY_HU)
    if count == 0:
        return np.zeros(block_mean.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    body = labels == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def _body_mask_2d(image: np.ndarray) -> np.ndarray:
    """Inside the body on one slice: above BODY_HU after light smoothing, holes (lungs) filled."""
    return ndimage.binary_fill_holes(ndimage.gaussian_filter(image, 2.0) > BODY_HU)


def find_uniform_regions(volume_hu: np.ndarray, spacing_xyz: Sequence[float], n: int = 5,
                         size_mm: float = 15.0, hu_range: Tuple[float, float] = SOFT_TISSUE_HU,
                         sd_factor: float = UNIFORM_SD_FACTOR) -> List[Box]:
    """Up to `n` non-overlapping uniform soft-tissue boxes inside the body, flattest first.

    Pass the LDCT input (the default choice): regions are then chosen without looking at the
    result, so a denoiser cannot make its own regions look good; its local SD is the noise SD plus
    any structure, and the flattest places are where it is the noise alone. A denoised image works
    too (sharper choice) when the regions are only used to read noise SD.

    The box has about `size_mm` per side (at least one slice; rounded so the search grid fits it).
    A candidate is scored by the SD over the box grown by half its size on each side, so the box
    keeps that margin from edges; its mean must lie in `hu_range`, the grown box inside the body,
    and its SD within `sd_factor` of the flattest candidates (see UNIFORM_SD_FACTOR).
    Memory: block sums only (a few percent of the volume), never a float copy of the volume.
    """
    if volume_hu.ndim != 3:
        raise InputError(f"Expected a 3D (z, y, x) volume, got {volume_hu.ndim} dimensions.")
    if n < 1:
        return []
    box_vox = [max(1, int(round(size_mm / s))) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    box_vox = [min(b, s) for b, s in zip(box_vox, volume_hu.shape)]
    # search grid step t: boxes are k blocks of t voxels (k = 4 where the box allows it)
    k_blocks = [min(4, b) for b in box_vox]
    step = [max(1, int(round(b / k))) for b, k in zip(box_vox, k_blocks)]
    k_blocks = [max(1, min(k, s // t)) for k, s, t in zip(k_blocks, volume_hu.shape, step)]
    s1, s2 = _block_sums(volume_hu, tuple(step))
    # half a box of margin on each side, less where the volume is too thin for it
    margin = [min(k // 2 if k >= 4 else min(k, 1), max(0, (g - k) // 2)) for k, g in zip(k_blocks, s1.shape)]
    voxels_per_block = float(np.prod(step))
    body = _body_blocks(s1 / voxels_per_block)
    outer = [k + 2 * m for k, m in zip(k_blocks, margin)]
    if any(o > g for o, g in zip(outer, s1.shape)):
        return []
    # statistics of the grown windows, and of the inner boxes at the same positions
    n_outer = voxels_per_block * np.prod(outer)
    o1, o2 = _window_sum(s1, tuple(outer)), _window_sum(s2, tuple(outer))
    score = np.sqrt(np.maximum(o2 / n_outer - (o1 / n_outer) ** 2, 0.0))
    inside = _window_sum(body.astype(np.float64), tuple(outer)) >= np.prod(outer) - 0.5
    inner = tuple(slice(m, m + g) for m, g in zip(margin, score.shape))
    n_inner = voxels_per_block * np.prod(k_blocks)
    mean = _window_sum(s1, tuple(k_blocks))[inner] / n_inner
    valid = inside & (mean >= hu_range[0]) & (mean <= hu_range[1])
    if not valid.any():
        return []
    limit = sd_factor * np.percentile(score[valid], 5)
    candidates = np.argwhere(valid & (score <= limit))
    order = np.argsort(score[tuple(candidates.T)], kind="stable")
    candidates = candidates[order]
    chosen: List[Box] = []
    alive = np.ones(len(candidates), bool)
    k_arr = np.array(k_blocks)
    for _ in range(n):
        left = np.flatnonzero(alive)
        if left.size == 0:
            break
        corner = candidates[left[0]]  # block index of the grown window's corner
        start = [(c + m) * t for c, m, t in zip(corner, margin, step)]
        chosen.append(Box(start[0], start[0] + k_blocks[0] * step[0], start[1], start[1] + k_blocks[1] * step[1],
                          start[2], start[2] + k_blocks[2] * step[2]))
        alive &= ~np.all(np.abs(candidates - corner) < k_arr, axis=1)  # inner boxes would overlap
    return chosen


def uniform_tissue_mask(volume_hu: np.ndarray, hu_range: Tuple[float, float] = SOFT_TISSUE_HU,
                        window_px: int = 9, sd_factor: float = 2.0, baseline_percentile: float = 10.0,
                        erode_px: int = 3, max_slices: Optional[int] = None) -> np.ndarray:
    """Voxels of uniform soft tissue, for `hu_shift`: inside the body, in-plane local mean
    (`window_px` square) in `hu_range`, local SD at most `sd_factor` times its `baseline_percentile`
    percentile over those voxels (the noise level), eroded by `erode_px` away from edges; only on
    `max_slices` evenly spaced slices when given (the others are False). Selecting on local SD
    does not bias the mean of zero-mean noise (sign symmetry), and the mask is much larger than a
    few boxes, so the mean removed noise over it is ~0 and a systematic HU shift is what remains."""
    mask = np.zeros(volume_hu.shape, bool)
    count = len(volume_hu) if max_slices is None else min(len(volume_hu), max_slices)
    index = np.unique(np.linspace(0, len(volume_hu) - 1, count).round().astype(int))
    local_sd, inside = {}, {}
    for z in index:
        x = np.asarray(volume_hu[z], np.float32)
        mean = ndimage.uniform_filter(x, window_px)
        local_sd[z] = np.sqrt(np.maximum(ndimage.uniform_filter(x * x, window_px) - mean * mean, 0.0))
        inside[z] = (mean >= hu_range[0]) & (mean <= hu_range[1]) & _body_mask_2d(x)
    pooled = np.concatenate([local_sd[z][inside[z]] for z in index]) if index.size else np.zeros(0)
    if pooled.size == 0:
        return mask
    limit = sd_factor * np.percentile(pooled, baseline_percentile)
    for z in index:
        mask[z] = ndimage.binary_erosion(inside[z] & (local_sd[z] <= limit), iterations=erode_px)
    return mask


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


# ---------------------------------------------------------------------------------------------
# Method noise

#: Score at or above which the noise map is said to contain structure (an over-smoothing filter).
METHOD_NOISE_THRESHOLD = 0.3
#: Scores from here up to the threshold are borderline: look at the noise map near edges.
METHOD_NOISE_BORDERLINE = 0.15
#: In-plane scales in pixels: the local-energy window, and the Gaussian-derivative scale of the
#: structure gradient (large enough that noise hardly shows in it).
METHOD_NOISE_WINDOW_PX = 5
METHOD_NOISE_GRADIENT_PX = 2.5
#: Edge pixels: structure gradient at or above both this percentile and EDGE_FACTOR x its median
#: (the median is the level of flat, noisy tissue); flat pixels: at or below the median.
EDGE_PERCENTILE = 90.0
EDGE_FACTOR = 3.0
MIN_EDGE_PIXELS = 20

_READINGS = {
    "empty": "nothing was removed (the noise map is empty)",
    "no edges": "too few edges in the image to judge the noise map",
    "noise": "noise map looks like noise",
    "borderline": "noise map holds some structure: check it near edges and fine detail",
    "structure": "noise map contains structure: the denoiser removed detail",
}


def _structure_gradient(volume: np.ndarray, z: int, sigma_px: float, neighbours: bool) -> np.ndarray:
    """In-plane gradient magnitude at slice z; from the adjacent slices when `neighbours`, because
    their noise is independent of slice z's while the anatomy is nearly the same."""
    near = [k for k in (z - 1, z + 1) if 0 <= k < len(volume)] if neighbours else []
    grads = [ndimage.gaussian_gradient_magnitude(np.asarray(volume[k], np.float32), sigma_px) for k in near or [z]]
    return grads[0] if len(grads) == 1 else (grads[0] + grads[1]) / 2


def _edge_versus_flat(energy: np.ndarray, gradient: np.ndarray) -> Optional[Tuple[float, int]]:
    """Rank-biserial correlation of `energy` between edge and flat pixels, and the edge count."""
    from scipy import stats  # ~0.3 s to import: only when the score is asked for

    median = np.median(gradient)
    edge = gradient >= max(np.percentile(gradient, EDGE_PERCENTILE), EDGE_FACTOR * median)
    flat = gradient <= median
    n_edge, n_flat = int(edge.sum()), int(flat.sum())
    if n_edge < MIN_EDGE_PIXELS or n_flat < MIN_EDGE_PIXELS:
        return None
    ranks = stats.rankdata(np.concatenate([energy[edge], energy[flat]]))
    auc = (ranks[:n_edge].sum() - n_edge * (n_edge + 1) / 2) / (n_edge * n_flat)
    return 2.0 * auc - 1.0, n_edge


def method_noise_score(input_hu: np.ndarray, output_hu: np.ndarray, structure_hu: Optional[np.ndarray] = None,
                       max_slices: int = 16, window_px: int = METHOD_NOISE_WINDOW_PX,
                       gradient_px: float = METHOD_NOISE_GRADIENT_PX) -> Dict[str, Any]:
    """Does the removed part (the noise map, input - output) contain anatomy? (Buades et al. 2005)

    Compares how much was removed along edges with how much was removed in flat tissue. Per slice,
    inside the body (lungs included), on up to `max_slices` evenly spaced slices:
      E = local variance of the noise map in a `window_px` (5) pixel square: the removed energy;
      G = in-plane gradient magnitude (Gaussian derivative, `gradient_px` = 2.5 px) of the structure
          image: by default the input on the two adjacent slices (their noise is independent of
          this slice's, their anatomy nearly the same, so the noise shared by the input and the
          noise map cannot correlate with itself); or `structure_hu` (noise-free, e.g. the NDCT of
          a benchmark) on the same slice;
      edge pixels: G >= max(90th percentile, 3 x median of G); flat pixels: G <= median of G;
      score = P(E_edge > E_flat) - P(E_edge < E_flat) for a random edge and flat pixel pair (the
          rank-biserial correlation, 2 AUC - 1); slices are averaged weighted by their edge pixels.
    Plain reading: +1 "along every edge more was removed than anywhere in flat tissue" (edges and
    fine detail went into the noise map); 0 "removed as much along edges as elsewhere" (noise
    only); negative: an edge-preserving denoiser that left a little noise along edges. Comparing
    fixed sets of edge and flat pixels keeps it independent of how much of the image is edges,
    and it is scale-free: the strength (noise map times s) does not change it.
    Readings: >= METHOD_NOISE_THRESHOLD (0.3) "contains structure", >= METHOD_NOISE_BORDERLINE (0.15)
    borderline, else "looks like noise". Measured on phantoms (128-512 px, 10-50 HU correlated noise)
    and on real CT with projection-domain simulated noise: removing exactly the noise (or half of
    it) 0.01..0.11; Gaussian blurs of sigma 0.7-2 px 0.74..1.0; bilateral filters (range 2x the
    noise SD) -0.55..0.07; BM3D -0.79..-0.21. Assumes the input's noise is independent from slice
    to slice (overlapping reconstructions share some of it, which raises the score of noise-only
    removal).
    Returns {"score", "reading", "level", "threshold", "borderline", "slices"}.
    """
    if input_hu.shape != output_hu.shape or input_hu.ndim != 3:
        raise InputError(f"Input {input_hu.shape} and output {output_hu.shape} must be the same 3D shape.")
    if structure_hu is not None and structure_hu.shape != input_hu.shape:
        raise InputError(f"Structure image {structure_hu.shape} and input {input_hu.shape} differ in shape.")
    index = np.unique(np.linspace(0, len(input_hu) - 1, min(len(input_hu), max_slices)).round().astype(int))
    scores, weights = [], []
    removed_any = False
    for z in index:
        x = np.asarray(input_hu[z], np.float32)
        noise_map = x - np.asarray(output_hu[z], np.float32)
        if not np.any(noise_map):
            continue
        removed_any = True
        mean = ndimage.uniform_filter(noise_map, window_px)
        energy = np.maximum(ndimage.uniform_filter(noise_map * noise_map, window_px) - mean * mean, 0.0)
        if structure_hu is None:
            gradient = _structure_gradient(input_hu, z, gradient_px, neighbours=True)
        else:
            gradient = _structure_gradient(structure_hu, z, gradient_px, neighbours=False)
        mask = _body_mask_2d(x)
        if mask.sum() < 64:
            mask = np.ones_like(mask)
        result = _edge_versus_flat(energy[mask], gradient[mask])
        if result is not None:
            scores.append(result[0])
            weights.append(result[1])
    if not removed_any:
        level, score = "empty", 0.0
    elif not scores:
        level, score = "no edges", 0.0
    else:
        score = float(np.average(scores, weights=weights))
        level = ("structure" if score >= METHOD_NOISE_THRESHOLD
                 else "borderline" if score >= METHOD_NOISE_BORDERLINE else "noise")
    return {"score": score, "reading": _READINGS[level], "level": level, "threshold": METHOD_NOISE_THRESHOLD,
            "borderline": METHOD_NOISE_BORDERLINE, "slices": len(scores)}
