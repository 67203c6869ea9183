"""Reference-free estimate of the noise of a CT volume: its level and its texture (NPS).

Two unit-norm Laplacians, one on neighbouring pixels and one on pixels two apart, respond to noise
far more than to smooth anatomy; their robust std (1.4826 * MAD) over soft tissue is the noise std
times a gain that depends only on the noise power spectrum. CT noise textures form a family
between the training noise (a smooth kernel) and a ramp (a sharp kernel such as Ram-Lak): the
ratio of the two responses picks the member of the family (`sharpness`), and that member's gain
turns the fine response into the noise std. Nothing is calibrated per subject, so a dose or a
kernel the models never saw is measured as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from .spectrum import DEFAULT_BAND_EDGES

#: Local-mean HU range of the soft tissue where noise is measured (`soft_tissue_mask`): wide, fat to
#: enhanced organs, because it only has to keep air and bone out.
NOISE_TISSUE_HU = (-150.0, 250.0)
_FINE = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float32) / np.sqrt(20.0)
_COARSE = np.zeros((5, 5), dtype=np.float32)
_COARSE[2, 2], _COARSE[0, 2], _COARSE[4, 2], _COARSE[2, 0], _COARSE[2, 4] = 4, -1, -1, -1, -1
_COARSE /= np.sqrt(20.0)
#: Soft tissue kept as flat: the fraction with the lowest gradient at this smoothing scale (pixels).
_FLAT_FRACTION, _EDGE_SIGMA_PX = 0.75, 3.0
#: Grid on which band powers are turned into a power spectrum (the adaptation patch size).
_GRID = 64
_SHARPNESS = np.linspace(0.0, 1.0, 41)


def soft_tissue_mask(slice_hu: np.ndarray) -> np.ndarray:
    """Pixels whose local mean is soft tissue, eroded away from boundaries with air and bone."""
    smooth = ndimage.uniform_filter(slice_hu.astype(np.float32), size=5)
    mask = (smooth > NOISE_TISSUE_HU[0]) & (smooth < NOISE_TISSUE_HU[1])
    return ndimage.binary_erosion(mask, iterations=3)


def soft_tissue_std(volume_hu: np.ndarray, values: np.ndarray) -> float:
    """Std of `values` (e.g. removed or inserted noise) over the soft tissue of `volume_hu`; over
    everything when there is too little soft tissue to judge."""
    mask = np.stack([soft_tissue_mask(s) for s in np.asarray(volume_hu, np.float32).reshape(-1, *volume_hu.shape[-2:])])
    values = np.asarray(values).reshape(mask.shape)
    return float(values[mask].std()) if mask.sum() > 64 else float(values.std())


def flat_soft_tissue_mask(slice_hu: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """`soft_tissue_mask` (or `mask`) without its steepest quarter of smoothed gradient (organ
    borders, vessels): the uniform-ish soft tissue where noise is measured and lesions are placed."""
    slice_hu = np.asarray(slice_hu, dtype=np.float32)
    mask = soft_tissue_mask(slice_hu) if mask is None else mask
    if not mask.any():
        return mask
    gradient = ndimage.gaussian_gradient_magnitude(slice_hu, _EDGE_SIGMA_PX)
    return mask & (gradient <= np.quantile(gradient[mask], _FLAT_FRACTION))


#: Window (Gaussian sigma, pixels) over which the local noise level is measured, and the range the
#: level map is held to (relative to the slice's flat soft tissue).
LOCAL_LEVEL_WINDOW_PX, LOCAL_LEVEL_RANGE = 12.0, (0.25, 4.0)


def local_level_map(volume_hu: np.ndarray, window_px: float = LOCAL_LEVEL_WINDOW_PX) -> np.ndarray:
    """Where each slice is noisier or quieter than its flat soft tissue on average (CT noise is not
    stationary: it rises behind bone and across the widest body paths), as a std ratio; (z, y, x) ->
    float32, same shape. The local power of a 3x3 high-pass residual, clipped at 3 robust SDs so that
    edges count little, is averaged over the flat soft tissue only (normalised convolution: the noise
    estimate's own region, no organ borders) and blended to 1 where under a tenth of the window is
    such tissue (air, bone, slices without tissue)."""
    maps = []
    for slice_hu in np.asarray(volume_hu, dtype=np.float32).reshape(-1, *volume_hu.shape[-2:]):
        tissue = flat_soft_tissue_mask(slice_hu)
        if tissue.sum() <= 64:
            maps.append(np.ones_like(slice_hu))
            continue
        residual = slice_hu - ndimage.uniform_filter(slice_hu, size=3)
        bound = 3 * _robust_std(residual)
        power = np.clip(residual, -bound, bound) ** 2 * tissue
        weight = ndimage.gaussian_filter(tissue.astype(np.float32), window_px)
        power = ndimage.gaussian_filter(power, window_px) / np.maximum(weight, 1e-6)
        low, high = LOCAL_LEVEL_RANGE
        ratio = np.sqrt(np.clip(power / max(float(power[tissue].mean()), 1e-12), low ** 2, high ** 2))
        near = np.clip(weight / 0.1, 0.0, 1.0)
        maps.append(near * ratio + (1 - near))
    return np.stack(maps).reshape(volume_hu.shape).astype(np.float32)


def _robust_std(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def laplacian_responses(volume_hu: np.ndarray) -> tuple:
    """Robust std of the fine and the coarse Laplacian over the flatter soft tissue of (z, y, x)
    slices (NaN, NaN without soft tissue). The soft tissue with the steepest smoothed gradient
    (organ borders, vessels) is left out: its structure would otherwise add to the responses,
    which matters most where the noise is low."""
    fine, coarse = [], []
    for slice_hu in np.asarray(volume_hu, dtype=np.float32).reshape(-1, *volume_hu.shape[-2:]):
        mask = soft_tissue_mask(slice_hu)
        if mask.sum() < 64:
            continue
        mask = flat_soft_tissue_mask(slice_hu, mask)
        fine.append(ndimage.convolve(slice_hu, _FINE, mode="reflect")[mask])
        coarse.append(ndimage.convolve(slice_hu, _COARSE, mode="reflect")[mask])
    if not fine:
        return float("nan"), float("nan")
    return _robust_std(np.concatenate(fine)), _robust_std(np.concatenate(coarse))


def _band_grid(edges: Sequence[float]):
    """Band number and radial frequency (cycles/pixel) of each coefficient of the FFT grid."""
    f = np.fft.fftfreq(_GRID)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return np.digitize(radius, np.asarray(edges[1:-1]), right=False), radius


def texture(smooth_band_power: Optional[Sequence[float]], sharpness: float,
            edges: Sequence[float] = DEFAULT_BAND_EDGES) -> np.ndarray:
    """Band powers (unit noise variance) of the family member `sharpness`: 0 = the smooth texture
    given (the training noise), 1 = a ramp, as FBP with a sharp kernel (Ram-Lak) makes; in between a geometric
    blend (both rise like a ramp at low frequencies, a sharper kernel keeps more of the high ones).
    Piecewise constant per band, as `spectrum.shape_noise` makes the pseudo-noise."""
    index, radius = _band_grid(edges)
    counts = np.bincount(index.ravel(), minlength=len(edges) - 1)
    # ramp filter up to the detector's Nyquist frequency times the sinc^2 of linear interpolation
    # in back-projection (pixel = detector spacing)
    radius = np.minimum(radius, 0.5)
    sharp = radius * np.sinc(radius) ** 2
    ramp = np.bincount(index.ravel(), sharp.ravel(), len(edges) - 1) / np.maximum(counts, 1)
    smooth = ramp if smooth_band_power is None else np.asarray(smooth_band_power, dtype=np.float64)

    def unit(power):  # variance over the grid = 1
        return power / power[index].mean()

    return unit(unit(smooth) ** (1.0 - sharpness) * unit(ramp) ** sharpness)


def texture_psd(band_power: Sequence[float], edges: Sequence[float] = DEFAULT_BAND_EDGES) -> np.ndarray:
    """The band powers over the FFT grid."""
    return np.asarray(band_power)[_band_grid(edges)[0]]


def _gain(kernel: np.ndarray, psd: np.ndarray) -> float:
    """Std of the kernel's response to unit-variance noise of this power spectrum."""
    response = np.abs(np.fft.fft2(kernel, psd.shape)) ** 2
    return float(np.sqrt((psd * response).mean()))


@dataclass(frozen=True)
class NoiseEstimate:
    std_hu: float             # noise std over soft tissue (NaN when there is none)
    sharpness: float          # 0 = the training texture, 1 = a ramp (sharp kernel)
    band_power: List[float]   # NPS per band for unit variance (spectrum.DEFAULT_BAND_EDGES)


def estimate_noise(volume_hu: np.ndarray, smooth_band_power: Optional[Sequence[float]] = None,
                   edges: Sequence[float] = DEFAULT_BAND_EDGES) -> NoiseEstimate:
    """Noise level and texture of a (z, y, x) HU volume, with no reference (see module doc).
    `smooth_band_power`: the training noise's band powers (bundle calibration), else a ramp."""
    fine, coarse = laplacian_responses(volume_hu)
    family = [texture(smooth_band_power, s, edges) for s in _SHARPNESS]
    psds = [texture_psd(p, edges) for p in family]
    gains = np.array([[_gain(_FINE, psd), _gain(_COARSE, psd)] for psd in psds])
    ratios = gains[:, 0] / gains[:, 1]  # grows with sharpness
    pick = int(np.argmin(np.abs(ratios - fine / coarse))) if np.isfinite(fine) and coarse > 0 else 0
    std = fine / gains[pick, 0] if np.isfinite(fine) else float("nan")
    return NoiseEstimate(float(std), float(_SHARPNESS[pick]), family[pick].tolist())


def describe_estimate(std_hu: Optional[float], sharpness: Optional[float]) -> str:
    """One line for people: the estimated noise of the input and its texture."""
    if std_hu is None or not np.isfinite(std_hu):
        return "input noise not estimated (no soft tissue)"
    kernel = "sharp kernel" if (sharpness or 0.0) >= 0.5 else "smooth kernel"
    return f"input noise ~{std_hu:.0f} HU in soft tissue ({kernel} texture)"


def describe_run_estimate(run: Mapping[str, Any]) -> str:
    """`describe_estimate` of the estimate a run recorded (run.denoise_array's info["run"])."""
    return describe_estimate(run.get("estimated_noise_std_hu"), run.get("estimated_noise_sharpness"))
