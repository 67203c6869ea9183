"""Synthetic CT-like phantoms with correlated noise, for tests, self-tests and examples.

Not a substitute for real CT (see `sources.py` and `dataset.py` for that): ellipses of body, fat, lungs, bone and
small details, plus noise made by band-pass filtering white noise so that, like FBP noise, it is
spatially correlated (lag-1 autocorrelation ~0.5) rather than white.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage


def _ellipse(shape: Tuple[int, int], centre, radii) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1.0


def clean_phantom(slices: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    """(slices, size, size) float32 HU: air, body 40 HU, fat -100, lungs -800, bone 700, dots."""
    rng = np.random.default_rng(seed)
    volume = np.full((slices, size, size), -1000.0, dtype=np.float32)
    c = size / 2
    for z in range(slices):
        wobble = 1.0 + 0.05 * np.sin(z / max(1, slices) * np.pi)
        image = volume[z]
        image[_ellipse(image.shape, (c, c), (0.42 * size * wobble, 0.46 * size))] = -100.0
        image[_ellipse(image.shape, (c, c), (0.38 * size * wobble, 0.42 * size))] = 40.0
        for side in (-1, 1):
            image[_ellipse(image.shape, (c - 0.05 * size, c + side * 0.2 * size), (0.15 * size, 0.1 * size))] = -800.0
        image[_ellipse(image.shape, (c + 0.25 * size, c), (0.06 * size, 0.06 * size))] = 700.0
        for _ in range(6):  # small, fine details
            y, x = rng.uniform(0.35, 0.65, 2) * size
            image[_ellipse(image.shape, (y, x), (1.2, 1.2))] = 120.0
    return volume


def correlated_noise(shape, sigma_hu: float, seed: int = 0, correlation_px: float = 1.0) -> np.ndarray:
    """Zero-mean noise of std `sigma_hu` with FBP-like spatial correlation (per slice)."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(shape).astype(np.float32)
    axes = (0, correlation_px, correlation_px) if len(shape) == 3 else correlation_px
    # difference of Gaussians: a band-pass, like the ramp-filtered, apodised noise of FBP
    noise = ndimage.gaussian_filter(white, axes) - 0.6 * ndimage.gaussian_filter(white, np.multiply(axes, 2.5))
    return (noise / noise.std() * sigma_hu).astype(np.float32)


def noisy_pair(slices: int = 8, size: int = 64, sigma_hu: float = 30.0, seed: int = 0):
    """(ldct, ndct) float32 HU arrays of one synthetic subject."""
    ndct = clean_phantom(slices, size, seed)
    return ndct + correlated_noise(ndct.shape, sigma_hu, seed + 1000), ndct
