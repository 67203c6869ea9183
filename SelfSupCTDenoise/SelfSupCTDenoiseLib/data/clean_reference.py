"""The `clean` protocol's reference: the NDCT denoised by methods that are not rows of the benchmark.

A reference made by one of the compared methods favours that method (its residual errors and texture
count as "truth"). So the reference is the mean of two denoisers of different families, neither of
which the benchmark compares: 3D non-local means (scikit-image, patch 5, search distance 6,
h = 0.8 sigma) and 3D total variation (Chambolle, weight sigma), each run over the whole volume where
it has several slices, so that neighbouring slices help. Averaging halves each family's own bias
(non-local means' patch copying, total variation's flat steps). `sigma` is the NDCT's own noise SD;
measured on the held-out subjects, the result keeps 2.5-7.6 HU SD in the NDCT's flattest boxes
(BM3D, the earlier reference, 2.1-9.6).
"""

from __future__ import annotations

import numpy as np

NLM_H_PER_SIGMA = 0.8
NLM_PATCH, NLM_DISTANCE = 5, 6
TV_WEIGHT_PER_SIGMA = 1.0


def consensus_reference(ndct: np.ndarray, sigma_hu: float) -> np.ndarray:
    """float32 (z, y, x): the mean of 3D non-local means and 3D total variation of `ndct`."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    volume = np.asarray(ndct, dtype=np.float32)
    shaped = volume if len(volume) > 1 else volume[0]  # one slice: the 2D forms
    sigma = float(sigma_hu)
    nlm = denoise_nl_means(shaped, patch_size=NLM_PATCH, patch_distance=NLM_DISTANCE,
                           h=NLM_H_PER_SIGMA * sigma, sigma=sigma, fast_mode=True, channel_axis=None)
    # TV's weight is relative to the image's scale: work in units of sigma
    tv = denoise_tv_chambolle(shaped / sigma, weight=TV_WEIGHT_PER_SIGMA) * sigma
    return (0.5 * (nlm + tv)).astype(np.float32).reshape(volume.shape)
