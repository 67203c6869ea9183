"""Radial frequency bands on square patches, in cycles/pixel (torch).

Used to calibrate pseudo-noise against real noise band by band and to shape it. Frequencies are
in cycles per pixel (spacing-free) because the networks work on pixels. The physical NPS in
HU^2 mm^2 for reports is in `quality/nps.py`.

torch is imported inside the functions: `noise_level` (and through it the Slicer panel, which must
never load torch into Slicer's own process) needs only `DEFAULT_BAND_EDGES` from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence

if TYPE_CHECKING:
    import torch

#: Band edges in cycles/pixel; the last band also takes the corners beyond 0.5.
DEFAULT_BAND_EDGES = [0.0, 0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.5]


def radial_frequency(size, device=None) -> torch.Tensor:
    """|f| in cycles/pixel over the FFT grid of a size x size (or (h, w)) image."""
    import torch

    h, w = (size, size) if isinstance(size, int) else size
    fy, fx = torch.fft.fftfreq(h, device=device), torch.fft.fftfreq(w, device=device)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def band_index(size, edges: Sequence[float], device=None) -> torch.Tensor:
    """Band number of each FFT coefficient of a size x size (or (h, w)) image; corners go to the
    last band."""
    import torch

    radius = radial_frequency(size, device)
    inner = torch.as_tensor(list(edges[1:-1]), dtype=radius.dtype, device=device)
    return torch.bucketize(radius, inner, right=True)


def patch_band_power(patches: torch.Tensor, edges: Sequence[float] = DEFAULT_BAND_EDGES) -> torch.Tensor:
    """Mean power per band of mean-subtracted patches (..., p, p); sums to the variance over bands
    weighted by their share of coefficients."""
    import torch

    size = patches.shape[-1]
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(centred.double()).abs() ** 2 / (size * size)
    power = power.reshape(-1, size, size).mean(0)
    index = band_index(size, edges, patches.device)
    n_bands = len(edges) - 1
    sums = torch.zeros(n_bands, dtype=power.dtype, device=power.device).index_add_(0, index.flatten(), power.flatten())
    counts = torch.bincount(index.flatten(), minlength=n_bands).to(power.dtype)
    return (sums / counts.clamp(min=1)).float()


def band_filter(size: int, gains: Sequence[float], edges: Sequence[float] = DEFAULT_BAND_EDGES,
                device=None) -> torch.Tensor:
    """Amplitude filter over the FFT grid: each coefficient gets its band's gain, so the band
    powers of the shaped noise are exactly the source's times gain**2."""
    import torch

    return torch.as_tensor(list(gains), dtype=torch.float32, device=device)[band_index(size, edges, device)]


def shape_noise(noise: torch.Tensor, gains: Sequence[float], edges: Sequence[float] = DEFAULT_BAND_EDGES) -> torch.Tensor:
    """Multiply the spectrum of square noise patches (..., p, p) by per-band gains."""
    import torch

    size = noise.shape[-1]
    filt = band_filter(size, gains, edges, noise.device)
    return torch.fft.ifft2(torch.fft.fft2(noise.float()) * filt).real


def gains_to_match(target_power: torch.Tensor, source_power: torch.Tensor) -> List[float]:
    """Amplitude gains that give the source the target's band powers."""
    import torch

    return torch.sqrt(target_power / source_power.clamp(min=1e-12)).tolist()
