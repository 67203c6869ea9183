"""Image-quality metrics against a reference, in the field's two conventions:

- soft-tissue window: both images clipped to [-160, 240] HU, data range 400 (RED-CNN code, Noise2Sim);
- full range: clipped to [-1024, 3072] HU, data range 4096 (the paper's scale).

PSNR is computed over the whole volume, SSIM per axial slice and averaged (scikit-image's
implementations), RMSE in HU without clipping. `psnr_edges` is the soft-window PSNR over the
reference's strongest edges only (`edge_mask`): a method that buys its PSNR by smoothing loses there. Volumes are taken slab by slab in float64: the
temporaries stay a few slices in size (the numbers are those of the whole-volume formulas).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from skimage.metrics import structural_similarity

from ..engine.arrays import slabs
from .regions import BODY_HU  # air outside the body has no edges worth scoring

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


#: The edge mask: per axial slice, this fraction of the body's pixels with the strongest gradient.
EDGE_FRACTION = 0.1


def edge_mask(reference: np.ndarray, window: str = "soft", fraction: float = EDGE_FRACTION) -> np.ndarray:
    """Boolean mask of the reference's strongest edges: per axial slice, the top `fraction` of the
    Sobel gradient magnitude of the window-clipped reference among the body's pixels."""
    from scipy import ndimage

    low, high = WINDOWS[window]
    reference = np.asarray(reference).reshape(-1, *np.shape(reference)[-2:])
    mask = np.zeros(reference.shape, dtype=bool)
    for z, plane in enumerate(reference):
        clipped = np.clip(plane.astype(np.float32), low, high)
        magnitude = np.hypot(ndimage.sobel(clipped, axis=0), ndimage.sobel(clipped, axis=1))
        body = plane > BODY_HU
        if body.sum() < 1 / fraction:
            continue
        mask[z] = body & (magnitude >= np.quantile(magnitude[body], 1 - fraction))
    return mask


def psnr_edges(image: np.ndarray, reference: np.ndarray, window: str = "soft") -> float:
    """PSNR (window as in `psnr`) over `edge_mask(reference)` only; NaN where the reference has no body."""
    low, high = WINDOWS[window]
    mask = edge_mask(reference, window)
    if image.shape != reference.shape:
        raise ValueError(f"image {image.shape} and reference {reference.shape} differ in size")
    if not mask.any():
        return float("nan")
    image = np.asarray(image).reshape(mask.shape)
    reference = np.asarray(reference).reshape(mask.shape)
    difference = (np.clip(image[mask].astype(np.float64), low, high)
                  - np.clip(reference[mask].astype(np.float64), low, high))
    with np.errstate(divide="ignore"):
        return float(10 * np.log10((high - low) ** 2 / np.mean(difference ** 2)))


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
            "rmse_hu": rmse(image, reference), "psnr_edges": psnr_edges(image, reference, "soft")}
