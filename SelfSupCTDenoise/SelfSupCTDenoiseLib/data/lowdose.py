"""Low-dose CT simulation by noise insertion in the projection domain (astra-toolbox, CPU).

This is how the AAPM/Mayo quarter-dose images were made (Yu et al., Med. Phys. 2012): forward-project
the normal-dose image, add the extra quantum + electronic noise a lower dose would have in the
measured counts, reconstruct only the noise difference and add it to the normal-dose image::

    mu = mu_water * (1 + HU / 1000), clamped to >= 0      (1/mm)
    p  = line integrals of mu                             (dimensionless: pixel spacing is used)
    N  = Poisson(I0 * exp(-p)) + Normal(0, sigma_e), clamped to >= 1
    p~ = -log(N / I0)
    LDCT = NDCT + (FBP(p~) - FBP(p)) / mu_water * 1000    (FBP is linear: one FBP of p~ - p)

So the anatomy and the noise already in the NDCT are kept as they are; only noise is added.

Geometry: parallel beam. astra's CPU FBP supports parallel-beam geometries only (fan-beam FBP is
CUDA-only), so no fan-beam geometry is offered. The number of views and detector bins scales with
the grid (about 1.4 N views, detectors covering the image diagonal at the pixel spacing), so small
volumes are cheap: a 512 x 512 slice takes about 1 s to project and 0.6 s per FBP on one core.

Dose: a dose fraction `dose` of a full-dose reference `i0_full` (photons per detector bin for the
reference geometry, `REF_VIEWS` views of bins `REF_SPACING_MM` wide). Because the NDCT already carries
the full-dose noise, the inserted counts use ``I0 = i0_full * dose / (1 - dose)`` (Yu et al.), so that
NDCT noise + inserted noise has the variance of an image taken at `dose`. I0 is then scaled per grid
(`grid_equivalent=True`) by ``(REF_VIEWS / views) * (REF_SPACING_MM / spacing)**2``: FBP noise
variance goes as 1 / (I0 * views * spacing**2), so a given dose gives about the same noise in HU on a
coarse resampled volume as on a native 512 x 512 slice (a real scanner would give the coarse grid
less noise; the denoiser sees pixels, so equal noise per pixel is what a training set needs).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

MU_WATER_PER_MM = 0.019          # linear attenuation of water at ~70 keV effective energy
#: FBP filters of astra's CPU FBP this module accepts; 'hann' is the standard (smooth) kernel here,
#: 'ram-lak' the sharp one.
FILTERS = ("hann", "ram-lak", "shepp-logan", "hamming", "cosine")
REF_VIEWS = 720                  # reference geometry for i0_full: 720 views ...
REF_SPACING_MM = 0.8             # ... of 0.8 mm bins (a 410 mm field of view on 512 pixels)
#: Full-dose photons per bin in the reference geometry, calibrated so that quarter dose with the Hann
#: filter inserts ~20 HU in the soft tissue of a native 512 x 512 abdomen slice whose own noise is
#: ~12 HU, i.e. roughly doubles it, as quarter dose does (docs/DATA.md).
DEFAULT_I0_FULL = 5.0e5
DEFAULT_SIGMA_E = 10.0           # electronic noise, counts (std)
VIEWS_PER_PIXEL = 1.4

Seed = Union[int, np.random.Generator, None]


@dataclass(frozen=True)
class ScanGeometry:
    """Parallel-beam geometry for one slice grid (rows, cols) of pixels `spacing_yx` (mm)."""

    rows: int
    cols: int
    spacing_yx: Tuple[float, float]
    views: int
    detectors: int
    detector_spacing: float

    @classmethod
    def for_grid(cls, shape: Sequence[int], spacing_yx: Sequence[float],
                 views_per_pixel: float = VIEWS_PER_PIXEL) -> "ScanGeometry":
        rows, cols = int(shape[0]), int(shape[1])
        sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
        if rows < 4 or cols < 4:
            raise ValueError(f"slice too small for a projection simulation: {rows}x{cols}")
        if not (sy > 0 and sx > 0):
            raise ValueError(f"pixel spacing must be positive, got {spacing_yx}")
        det_spacing = min(sx, sy)
        diagonal = math.hypot(rows * sy, cols * sx)
        detectors = 2 * math.ceil((diagonal / det_spacing + 4) / 2)    # even, covers the diagonal
        views = max(16, int(round(views_per_pixel * max(rows, cols))))
        return cls(rows, cols, (sy, sx), views, detectors, det_spacing)

    def i0_scale(self) -> float:
        """Factor on I0 that keeps the FBP noise variance independent of views and bin width."""
        return (REF_VIEWS / self.views) * (REF_SPACING_MM / self.detector_spacing) ** 2


def insertion_i0(dose: float, i0_full: float = DEFAULT_I0_FULL) -> float:
    """I0 of the noise to insert into a full-dose image to simulate `dose` (0 < dose < 1).

    The image keeps its full-dose noise (variance ~ 1/i0_full); adding noise of variance
    ~ (1/dose - 1)/i0_full gives the variance of a scan at `dose`: I0 = i0_full * dose / (1 - dose).
    """
    if not 0.0 < dose < 1.0:
        raise ValueError(f"dose must be a fraction in (0, 1), got {dose}")
    return i0_full * dose / (1.0 - dose)


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    return np.maximum(MU_WATER_PER_MM * (1.0 + hu.astype(np.float32) / 1000.0), 0.0).astype(np.float32)


def make_rng(seed: Seed, *keys: Union[int, str]) -> np.random.Generator:
    """A Generator from an int seed and stable keys (strings are hashed with crc32, not hash())."""
    if isinstance(seed, np.random.Generator):
        return seed
    words = [int(seed or 0)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)


class SliceSimulator:
    """astra projector + FBP for one grid, reused across the slices of a volume.

    Use as a context manager (or call `close()`) so astra's objects are freed.
    """

    def __init__(self, geometry: ScanGeometry, projector: str = "linear"):
        import astra  # optional dependency (the `data` extra): imported only when simulating

        self._astra = astra
        self.geometry = g = geometry
        half_w, half_h = g.cols * g.spacing_yx[1] / 2.0, g.rows * g.spacing_yx[0] / 2.0
        self._vol_geom = astra.create_vol_geom(g.rows, g.cols, -half_w, half_w, -half_h, half_h)
        angles = np.linspace(0.0, np.pi, g.views, endpoint=False)
        self._proj_geom = astra.create_proj_geom("parallel", g.detector_spacing, g.detectors, angles)
        self._projector = astra.create_projector(projector, self._proj_geom, self._vol_geom)

    def close(self) -> None:
        if self._projector is not None:
            self._astra.projector.delete(self._projector)
            self._projector = None

    def __enter__(self) -> "SliceSimulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line_integrals(self, hu: np.ndarray) -> np.ndarray:
        """Sinogram (views, detectors) of the attenuation of one HU slice."""
        astra = self._astra
        sino_id, sino = astra.create_sino(hu_to_mu(hu), self._projector)
        astra.data2d.delete(sino_id)
        return sino.astype(np.float64)

    def fbp(self, sinogram: np.ndarray, filter_type: str = "hann") -> np.ndarray:
        """Filtered back-projection of a sinogram, in 1/mm."""
        if filter_type not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {filter_type!r}")
        astra = self._astra
        sino_id = astra.data2d.create("-sino", self._proj_geom, sinogram.astype(np.float32))
        rec_id = astra.data2d.create("-vol", self._vol_geom, 0.0)
        cfg = astra.astra_dict("FBP")
        cfg.update(ReconstructionDataId=rec_id, ProjectionDataId=sino_id, ProjectorId=self._projector,
                   FilterType=filter_type)
        alg_id = astra.algorithm.create(cfg)
        try:
            astra.algorithm.run(alg_id)
            return astra.data2d.get(rec_id)
        finally:
            astra.algorithm.delete(alg_id)
            astra.data2d.delete([sino_id, rec_id])

    def noisy_line_integrals(self, p: np.ndarray, i0: float, rng: np.random.Generator,
                             sigma_e: float = DEFAULT_SIGMA_E) -> np.ndarray:
        """p~ = -log(N / I0), N = Poisson(I0 e^-p) + Normal(0, sigma_e), clamped to >= 1."""
        counts = rng.poisson(i0 * np.exp(-p)).astype(np.float64)
        if sigma_e > 0:
            counts += rng.normal(0.0, sigma_e, size=counts.shape)
        return -np.log(np.maximum(counts, 1.0) / i0)

    def noise_hu(self, p: np.ndarray, i0: float, rng: np.random.Generator, filter_type: str = "hann",
                 sigma_e: float = DEFAULT_SIGMA_E) -> np.ndarray:
        """Image-domain noise (HU) that counts at `i0` add: (FBP(p~) - FBP(p)) / mu_water * 1000."""
        delta = self.noisy_line_integrals(p, i0, rng, sigma_e) - p
        return (self.fbp(delta, filter_type) * (1000.0 / MU_WATER_PER_MM)).astype(np.float32)


@dataclass(frozen=True)
class DoseSpec:
    """One simulated protocol: dose fraction and FBP filter; `tag` names it (e.g. 'd25_hann')."""

    dose: float
    filter: str = "hann"

    @property
    def tag(self) -> str:
        return f"d{int(round(self.dose * 100)):02d}_{self.filter.replace('-', '')}"

    @classmethod
    def from_tag(cls, tag: str) -> "DoseSpec":
        """Inverse of `tag`: 'd25_ramlak' -> DoseSpec(0.25, 'ram-lak')."""
        dose_part, _, filt = tag.partition("_")
        names = {f.replace("-", ""): f for f in FILTERS}
        if not dose_part.startswith("d") or filt not in names:
            raise ValueError(f"not a dose tag: {tag!r}")
        return cls(int(dose_part[1:]) / 100.0, names[filt])


def i0_for(spec: DoseSpec, geometry: ScanGeometry, i0_full: float = DEFAULT_I0_FULL,
           grid_equivalent: bool = True) -> float:
    """Counts per bin of the inserted noise for `spec` on `geometry` (see the module docstring)."""
    i0 = insertion_i0(spec.dose, i0_full)
    return i0 * geometry.i0_scale() if grid_equivalent else i0


def simulate_volume_multi(volume_hu: np.ndarray, spacing_xyz: Sequence[float], specs: Iterable[DoseSpec],
                          seed: Seed = 0, i0_full: float = DEFAULT_I0_FULL,
                          sigma_e: float = DEFAULT_SIGMA_E, grid_equivalent: bool = True,
                          on_slice: Optional[Callable[[int, int], None]] = None) -> Dict[str, np.ndarray]:
    """Low-dose versions of a (z, y, x) HU volume for several protocols, slice by slice.

    One forward projection per slice is shared by all protocols. Each protocol draws from its own
    stream (seed + tag), so adding a protocol does not change the others. Returns float32 HU arrays of
    the input's shape keyed by tag.
    """
    vol = np.asarray(volume_hu)
    if vol.ndim == 2:
        return {k: v[0] for k, v in simulate_volume_multi(vol[None], spacing_xyz, specs, seed, i0_full,
                                                          sigma_e, grid_equivalent, on_slice).items()}
    if vol.ndim != 3:
        raise ValueError(f"expected a 2D slice or a (z, y, x) volume, got shape {vol.shape}")
    specs = list(specs)
    geometry = ScanGeometry.for_grid(vol.shape[1:], (spacing_xyz[1], spacing_xyz[0]))
    rngs = {s.tag: make_rng(seed, s.tag) for s in specs}
    out = {s.tag: np.empty(vol.shape, np.float32) for s in specs}
    with SliceSimulator(geometry) as sim:
        for z in range(vol.shape[0]):
            ndct = vol[z].astype(np.float32)
            p = sim.line_integrals(ndct)
            for s in specs:
                i0 = i0_for(s, geometry, i0_full, grid_equivalent)
                out[s.tag][z] = ndct + sim.noise_hu(p, i0, rngs[s.tag], s.filter, sigma_e)
            if on_slice is not None:
                on_slice(z + 1, vol.shape[0])
    return out


def simulate_low_dose(volume_hu: np.ndarray, spacing_xyz: Sequence[float], dose: float = 0.25,
                      filter_type: str = "hann", seed: Seed = 0, i0_full: float = DEFAULT_I0_FULL,
                      sigma_e: float = DEFAULT_SIGMA_E, grid_equivalent: bool = True) -> np.ndarray:
    """LDCT (float32 HU, same shape) of one 2D slice or a (z, y, x) volume at `dose` of full dose.

    `spacing_xyz` is (x, y[, z]) in mm as SimpleITK gives it; only x and y are used.
    """
    spec = DoseSpec(dose, filter_type)
    return simulate_volume_multi(volume_hu, spacing_xyz, [spec], seed, i0_full, sigma_e,
                                 grid_equivalent)[spec.tag]
