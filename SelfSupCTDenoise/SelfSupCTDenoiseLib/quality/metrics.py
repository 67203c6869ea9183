"""Image-quality metrics against a reference, in the field's two conventions (METHOD.md):

- soft-tissue window: both images clipped to [-160, 240] HU, data range 400 (RED-CNN code, Noise2Sim);
- full range: clipped to [-1024, 3072] HU, data range 4096 (the paper's scale).

PSNR is computed over the whole volume, SSIM per axial slice and averaged (scikit-image's
implementations), RMSE in HU without clipping. Volumes are taken slab by slab in float64: the
temporaries stay a few slices in size (the numbers are those of the whole-volume formulas).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from skimage.metrics import structural_similarity

from ..engine.arrays import slabs

WINDOWS = {"soft": (-160.0, 240.0), "full": (-1024.0, 3072.0)}


def _mean_squared_difference(image: np.ndarray, reference: np.ndarray, window=None) -> float:
    """mean((image - reference)^2) in float64, both clipped to `window` (low, high) if given."""
    image, reference = np.asarray(image), np.asarray(reference)
    if image.shape != reference.shape:
        raise ValueError(f"image {image.shape} and reference {reference.shape} differ in size")
    total = 0.0
    for part in slabs(image):
        a, b = image[part].astype(np.float64), reference[part].astype(np.float64)
        if window is not None:
            np.clip(a, *window, out=a)
            np.clip(b, *window, out=b)
        a -= b
        total += float(np.dot(a.ravel(), a.ravel()))
    return total / image.size


def psnr(image: np.ndarray, reference: np.ndarray, window: str = "soft") -> float:
    """scikit-image's peak_signal_noise_ratio of the clipped images (data range: the window's width)."""
    low, high = WINDOWS[window]
    with np.errstate(divide="ignore"):  # identical images: inf, as scikit-image gives
        return float(10 * np.log10((high - low) ** 2 / np.float64(_mean_squared_difference(image, reference,
                                                                                             (low, high)))))


def ssim(image: np.ndarray, reference: np.ndarray, window: str = "soft") -> float:
    low, high = WINDOWS[window]
    image = np.asarray(image).reshape(-1, *np.shape(image)[-2:])
    reference = np.asarray(reference).reshape(-1, *np.shape(reference)[-2:])
    win = min(7, *[s - (1 - s % 2) for s in image.shape[-2:]])
    return float(np.mean([structural_similarity(np.clip(r, low, high).astype(np.float64),
                                                np.clip(i, low, high).astype(np.float64),
                                                data_range=high - low, win_size=win)
                          for i, r in zip(image, reference)]))


def rmse(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(_mean_squared_difference(image, reference)))


def compare(image: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """All the numbers `evaluate` and the benchmark report for one image."""
    if image.shape != reference.shape:
        raise ValueError(f"image {image.shape} and reference {reference.shape} differ in size")
    return {"psnr_soft": psnr(image, reference, "soft"), "ssim_soft": ssim(image, reference, "soft"),
            "psnr_full": psnr(image, reference, "full"), "ssim_full": ssim(image, reference, "full"),
            "rmse_hu": rmse(image, reference)}
