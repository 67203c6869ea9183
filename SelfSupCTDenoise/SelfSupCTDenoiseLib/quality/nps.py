"""Noise power spectrum (ICRU Report 87) and simple noise-texture statistics, in numpy only.

From mean-subtracted ROIs of a noise-only image (e.g. LDCT - NDCT)::

    NPS(fx, fy) = (dx * dy / (Nx * Ny)) * < |DFT2(ROI - mean(ROI))|^2 >     (HU^2 mm^2)

Its integral over the frequency plane equals the noise variance (Parseval). The radial average is
taken in rings of the frequency bin width up to Nyquist: in mm^-1 when the pixel spacing is given,
in cycles/pixel with spacing 1 (what the pseudo-noise calibration uses, since the networks see
pixels). A radial NPS integrates as  sum(2 pi f NPS(f) df);  the corners of the frequency square
beyond Nyquist are left out of the radial curve, so its integral is slightly below the variance.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from ..engine.arrays import evenly_spaced


def iter_rois(image: np.ndarray, roi_size: int, mask: Optional[np.ndarray] = None,
              stride: Optional[int] = None) -> Iterator[np.ndarray]:
    """Square ROIs of a 2D slice or a (z, y, x) volume (per slice), wholly inside `mask` if given."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[None]
        mask = None if mask is None else np.asarray(mask)[None]
    stride = stride or roi_size
    for z in range(img.shape[0]):
        for y in range(0, img.shape[1] - roi_size + 1, stride):
            for x in range(0, img.shape[2] - roi_size + 1, stride):
                if mask is None or mask[z, y:y + roi_size, x:x + roi_size].all():
                    yield img[z, y:y + roi_size, x:x + roi_size]


def extract_rois(image: np.ndarray, roi_size: int, mask: Optional[np.ndarray] = None,
                 stride: Optional[int] = None, max_rois: Optional[int] = None) -> np.ndarray:
    """Stack of ROIs (n, roi, roi) as float64; evenly thinned to `max_rois` when given."""
    rois = list(iter_rois(image, roi_size, mask, stride))
    if not rois:
        raise ValueError(f"no {roi_size}x{roi_size} ROI fits in the image/mask")
    if max_rois is not None and len(rois) > max_rois:
        rois = [rois[i] for i in evenly_spaced(len(rois), max_rois)]
    return np.stack(rois).astype(np.float64)


def nps_2d(rois: np.ndarray, spacing_yx: Sequence[float] = (1.0, 1.0),
           detrend: str = "mean") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D NPS averaged over ROIs; returns (nps, fy, fx), zero frequency centred (fftshift).

    `rois` is (n, ny, nx) or one (ny, nx) ROI. `detrend` is 'mean' (ICRU 87) or 'plane' (also
    removes a linear ramp, for ROIs with slow background trends).
    """
    r = np.asarray(rois, dtype=np.float64)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3:
        raise ValueError(f"expected ROIs of shape (n, ny, nx), got {r.shape}")
    n, ny, nx = r.shape
    if detrend == "mean":
        r = r - r.mean(axis=(1, 2), keepdims=True)
    elif detrend == "plane":
        yy, xx = np.mgrid[:ny, :nx]
        design = np.stack([np.ones(ny * nx), yy.ravel(), xx.ravel()], axis=1)
        coef, *_ = np.linalg.lstsq(design, r.reshape(n, -1).T, rcond=None)
        r = r - (design @ coef).T.reshape(n, ny, nx)
    else:
        raise ValueError("detrend must be 'mean' or 'plane'")
    dy, dx = float(spacing_yx[0]), float(spacing_yx[1])
    power = np.abs(np.fft.fft2(r)) ** 2
    nps = np.fft.fftshift(power.mean(axis=0)) * (dx * dy / (nx * ny))
    fy = np.fft.fftshift(np.fft.fftfreq(ny, d=dy))
    fx = np.fft.fftshift(np.fft.fftfreq(nx, d=dx))
    return nps, fy, fx


def nps_integral(nps: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> float:
    """Integral of a 2D NPS over the frequency plane: equals the variance of the ROIs."""
    return float(nps.sum() * abs(fy[1] - fy[0]) * abs(fx[1] - fx[0]))


def radial_average(nps: np.ndarray, fy: np.ndarray, fx: np.ndarray,
                   max_freq: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Ring average of a 2D NPS: (nps_radial, freqs), rings of the bin width, up to Nyquist.

    Returned in the order the helpers below take them: `nps_band_variance(*radial_average(...), edges)`.
    """
    df = min(abs(fy[1] - fy[0]), abs(fx[1] - fx[0]))
    nyquist = min(np.abs(fy).max(), np.abs(fx).max())
    max_freq = nyquist if max_freq is None else max_freq
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    ring = np.rint(radius / df).astype(int)
    n_rings = int(np.floor(max_freq / df + 1e-9)) + 1
    keep = ring < n_rings
    sums = np.bincount(ring[keep], weights=nps[keep], minlength=n_rings)
    counts = np.bincount(ring[keep], minlength=n_rings)
    return sums / np.maximum(counts, 1), np.arange(n_rings) * df


def radial_nps(rois: np.ndarray, spacing_yx: Sequence[float] = (1.0, 1.0),
               detrend: str = "mean") -> Tuple[np.ndarray, np.ndarray]:
    """Radially averaged NPS of ROIs: (NPS in HU^2 mm^2, freqs in mm^-1) up to Nyquist."""
    return radial_average(*nps_2d(rois, spacing_yx, detrend))


def radial_nps_pixels(rois: np.ndarray, detrend: str = "mean") -> Tuple[np.ndarray, np.ndarray]:
    """Radially averaged NPS (HU^2 pixel^2, freqs in cycles/pixel), independent of the pixel spacing."""
    return radial_nps(rois, (1.0, 1.0), detrend)


def _ring_weights(freqs: np.ndarray) -> np.ndarray:
    """Area of the ring around each radial bin centre (the first bin is a disc of radius df/2)."""
    df = freqs[1] - freqs[0] if len(freqs) > 1 else 1.0
    w = 2.0 * np.pi * freqs * df
    w[freqs == 0] = np.pi * (df / 2.0) ** 2
    return w


def radial_integral(nps_radial: np.ndarray, freqs: np.ndarray) -> float:
    """Integral of a radial NPS over the disc up to its last frequency (sum 2 pi f NPS df)."""
    return float(np.sum(np.asarray(nps_radial) * _ring_weights(np.asarray(freqs, dtype=float))))


def nps_band_variance(nps_radial: np.ndarray, freqs: np.ndarray, band_edges: Sequence[float]) -> np.ndarray:
    """Noise power (variance) in each radial band [edge_i, edge_i+1) of a radial NPS.

    Bins are assigned by their centre frequency; the last edge is inclusive. Frequencies in the
    units of `freqs` (mm^-1 or cycles/pixel); the result is in the NPS's intensity units squared.
    """
    freqs = np.asarray(freqs, dtype=float)
    power = np.asarray(nps_radial, dtype=float) * _ring_weights(freqs)
    edges = np.asarray(band_edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("band_edges must be at least two increasing frequencies")
    out = np.zeros(len(edges) - 1)
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        sel = (freqs >= lo) & ((freqs <= hi) if last else (freqs < hi))
        out[i] = power[sel].sum()
    return out


def band_fractions(nps_radial: np.ndarray, freqs: np.ndarray, band_edges: Sequence[float]) -> np.ndarray:
    """`nps_band_variance` divided by the total power of the radial NPS (fractions summing to <= 1)."""
    total = radial_integral(nps_radial, freqs)
    return nps_band_variance(nps_radial, freqs, band_edges) / total if total > 0 else np.zeros(len(band_edges) - 1)


def peak_frequency(nps_radial: np.ndarray, freqs: np.ndarray) -> float:
    """Frequency of the NPS maximum (the zero-frequency bin is skipped: mean removal empties it)."""
    nps_radial = np.asarray(nps_radial)
    return float(freqs[1:][np.argmax(nps_radial[1:])]) if len(freqs) > 1 else 0.0


def mean_frequency(nps_radial: np.ndarray, freqs: np.ndarray) -> float:
    """Power-weighted mean radial frequency: a one-number summary of the noise texture."""
    power = np.asarray(nps_radial) * _ring_weights(np.asarray(freqs, dtype=float))
    return float(np.sum(power * freqs) / np.sum(power)) if np.sum(power) > 0 else 0.0


def lag1_autocorrelation(noise: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean correlation of each pixel with its right and lower neighbours (white noise: 0).

    `noise` is a 2D slice or a (z, y, x) volume (in-plane neighbours only); with `mask`, only pairs
    whose both pixels are inside it count.
    """
    n = np.asarray(noise, dtype=np.float64)
    if n.ndim == 2:
        n = n[None]
        mask = None if mask is None else np.asarray(mask)[None]
    m = np.ones(n.shape, bool) if mask is None else np.asarray(mask, bool)
    corrs = []
    for a, b, ma, mb in ((n[:, :, :-1], n[:, :, 1:], m[:, :, :-1], m[:, :, 1:]),
                         (n[:, :-1, :], n[:, 1:, :], m[:, :-1, :], m[:, 1:, :])):
        sel = ma & mb
        if sel.sum() > 2:
            corrs.append(np.corrcoef(a[sel], b[sel])[0, 1])
    return float(np.mean(corrs)) if corrs else float("nan")
