"""Regions of a CT volume for the trust measures: boxes given in voxels or mm, their statistics, and
uniform soft-tissue regions found automatically (numpy + scipy.ndimage only).

Conventions: arrays are (z, y, x) in HU; spacings are (x, y, z) in mm, as SimpleITK gives them;
a `Box` indexes voxels (z, y, x), start inclusive, stop exclusive.

- `Box`, `parse_box`, `box_from_mm`, `box_around`: regions given in voxels or in mm.
- `region_stats`, `compare_regions`: mean / SD / count of a region (before/after tables).
- `find_uniform_regions`: uniform soft-tissue boxes found automatically, for noise SD and HU shift.
- `uniform_tissue_mask`: uniform soft-tissue voxels (for `hu_shift.hu_shift`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..engine.arrays import evenly_spaced
from ..errors import InputError

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
UNIFORM_TISSUE_HU = (-30.0, 150.0)
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


def body_mask_2d(image: np.ndarray) -> np.ndarray:
    """Inside the body on one slice: above BODY_HU after light smoothing, holes (lungs) filled."""
    return ndimage.binary_fill_holes(ndimage.gaussian_filter(image, 2.0) > BODY_HU)


def find_uniform_regions(volume_hu: np.ndarray, spacing_xyz: Sequence[float], n: int = 5,
                         size_mm: float = 15.0, hu_range: Tuple[float, float] = UNIFORM_TISSUE_HU,
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


def uniform_tissue_mask(volume_hu: np.ndarray, hu_range: Tuple[float, float] = UNIFORM_TISSUE_HU,
                        window_px: int = 9, sd_factor: float = 2.0, baseline_percentile: float = 10.0,
                        erode_px: int = 3, max_slices: Optional[int] = None) -> np.ndarray:
    """Voxels of uniform soft tissue, for `hu_shift`: inside the body, in-plane local mean
    (`window_px` square) in `hu_range`, local SD at most `sd_factor` times its `baseline_percentile`
    percentile over those voxels (the noise level), eroded by `erode_px` away from edges; only on
    `max_slices` evenly spaced slices when given (the others are False). Selecting on local SD
    does not bias the mean of zero-mean noise (sign symmetry), and the mask is much larger than a
    few boxes, so the mean removed noise over it is ~0 and a systematic HU shift is what remains."""
    mask = np.zeros(volume_hu.shape, bool)
    index = evenly_spaced(len(volume_hu), len(volume_hu) if max_slices is None else max_slices)
    local_sd, inside = {}, {}
    for z in index:
        x = np.asarray(volume_hu[z], np.float32)
        mean = ndimage.uniform_filter(x, window_px)
        local_sd[z] = np.sqrt(np.maximum(ndimage.uniform_filter(x * x, window_px) - mean * mean, 0.0))
        inside[z] = (mean >= hu_range[0]) & (mean <= hu_range[1]) & body_mask_2d(x)
    pooled = np.concatenate([local_sd[z][inside[z]] for z in index]) if index.size else np.zeros(0)
    if pooled.size == 0:
        return mask
    limit = sd_factor * np.percentile(pooled, baseline_percentile)
    for z in index:
        mask[z] = ndimage.binary_erosion(inside[z] & (local_sd[z] <= limit), iterations=erode_px)
    return mask

