"""Image-quality metrics against a reference, in the field's two conventions (METHOD.md):

- soft-tissue window: both images clipped to [-160, 240] HU, data range 400 (RED-CNN code, Noise2Sim);
- full range: clipped to [-1024, 3072] HU, data range 4096 (the paper's scale).

PSNR is computed over the whole volume, SSIM per axial slice and averaged (scikit-image's
implementations), RMSE in HU without clipping.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

WINDOWS = {"soft": (-160.0, 240.0), "full": (-1024.0, 3072.0)}


def psnr(image: np.ndarray, reference: np.ndarray, window: str = "soft") -> float:
    low, high = WINDOWS[window]
    return float(peak_signal_noise_ratio(np.clip(reference, low, high).astype(np.float64),
                                         np.clip(image, low, high).astype(np.float64), data_range=high - low))


def ssim(image: np.ndarray, reference: np.ndarray, window: str = "soft") -> float:
    low, high = WINDOWS[window]
    image = np.clip(image, low, high).astype(np.float64).reshape(-1, *image.shape[-2:])
    reference = np.clip(reference, low, high).astype(np.float64).reshape(-1, *reference.shape[-2:])
    win = min(7, *[s - (1 - s % 2) for s in image.shape[-2:]])
    return float(np.mean([structural_similarity(r, i, data_range=high - low, win_size=win)
                          for i, r in zip(image, reference)]))


def rmse(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)))


def compare(image: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """All the numbers `evaluate` and the benchmark report for one image."""
    if image.shape != reference.shape:
        raise ValueError(f"image {image.shape} and reference {reference.shape} differ in size")
    return {"psnr_soft": psnr(image, reference, "soft"), "ssim_soft": ssim(image, reference, "soft"),
            "psnr_full": psnr(image, reference, "full"), "ssim_full": ssim(image, reference, "full"),
            "rmse_hu": rmse(image, reference)}
