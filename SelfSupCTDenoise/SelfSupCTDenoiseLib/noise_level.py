"""Reference-free estimate of the noise level of a CT volume.

A unit-norm Laplacian responds to noise much more than to smooth anatomy; its median absolute
deviation over soft-tissue pixels (robust to the edges that remain) is proportional to the noise
std for a given noise texture. The constant of proportionality for CT noise (spatially correlated,
so not the white-noise constant) is calibrated on the training pairs and stored in the bundle:
std(LDCT - NDCT) = k * laplacian_mad(LDCT).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float32) / np.sqrt(20.0)
SOFT_TISSUE_HU = (-150.0, 250.0)


def soft_tissue_mask(slice_hu: np.ndarray) -> np.ndarray:
    """Pixels whose local mean is soft tissue, eroded away from boundaries with air and bone."""
    smooth = ndimage.uniform_filter(slice_hu.astype(np.float32), size=5)
    mask = (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])
    return ndimage.binary_erosion(mask, iterations=3)


def soft_tissue_std(volume_hu: np.ndarray, values: np.ndarray) -> float:
    """Std of `values` (e.g. removed or inserted noise) over the soft tissue of `volume_hu`; over
    everything when there is too little soft tissue to judge."""
    mask = np.stack([soft_tissue_mask(s) for s in np.asarray(volume_hu, np.float32).reshape(-1, *volume_hu.shape[-2:])])
    values = np.asarray(values).reshape(mask.shape)
    return float(values[mask].std()) if mask.sum() > 64 else float(values.std())


def laplacian_mad(volume_hu: np.ndarray) -> float:
    """Robust std (1.4826 * MAD) of the unit-norm Laplacian over soft tissue of (z, y, x) slices."""
    values = []
    for slice_hu in np.asarray(volume_hu, dtype=np.float32).reshape(-1, *volume_hu.shape[-2:]):
        mask = soft_tissue_mask(slice_hu)
        if mask.sum() < 64:
            continue
        response = ndimage.convolve(slice_hu, _LAPLACIAN, mode="reflect")
        values.append(response[mask])
    if not values:
        return float("nan")
    values = np.concatenate(values)
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def estimate_noise_std(volume_hu: np.ndarray, k: float) -> float:
    """Noise std (HU) of the input, with k calibrated on the training pairs (see module doc)."""
    return k * laplacian_mad(volume_hu)
