"""Pseudo-noise Z for the pseudo-LDCT X~ = Y~ + Z (see `config.PSEUDO_NOISE` for the kinds).

Everything here is in the networks' units. The noise models' outputs for the patch pool are
computed once (they are frozen and X is fixed) and, with noise_level="local", the input's local
noise level map (noise_level.local_level_map); both ride as aligned fields of the patch sampler
(adapt.PatchSampler), which a source then combines per step.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from ..errors import BundleError
from .normalization import Normalization
from .spectrum import DEFAULT_BAND_EDGES, gains_to_match, patch_band_power, shape_noise

MODEL_KINDS = ("paper", "scaled", "spectral", "model+hist")
#: Kinds whose level follows the input's estimated noise when noise_level="input" (and its local
#: level map when "local"). `paper` stays as written and `gaussian` has an explicit sigma.
LEVELLED_KINDS = ("scaled", "spectral", "synthetic", "fitted", "hist", "model+hist")


def sample_histogram(hist: Dict[str, Any], shape, generator: torch.Generator, device) -> torch.Tensor:
    """i.i.d. draws (HU) from a histogram {"edges": [...], "counts": [...]}, uniform within a bin."""
    edges = torch.as_tensor(hist["edges"], dtype=torch.float32)
    counts = torch.as_tensor(hist["counts"], dtype=torch.float32)
    n = int(torch.tensor(shape).prod())
    bins = torch.multinomial(counts / counts.sum(), n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator)
    values = edges[bins] + u * (edges[bins + 1] - edges[bins])
    return values.reshape(shape).to(device)


class PseudoNoiseSource:
    """Draws Z for a batch of patches, given the noise models' outputs on those patches."""

    def __init__(self, kind: str, calibration: Dict[str, Any], normalization: Normalization,
                 noise_histogram: Optional[Dict[str, Any]] = None, gaussian_sigma_hu: float = 20.0,
                 generator: Optional[torch.Generator] = None, input_band_power: Optional[Sequence[float]] = None,
                 local_level: bool = False) -> None:
        self.kind = kind
        self.calibration = calibration
        self.normalization = normalization
        self.noise_histogram = noise_histogram
        self.gaussian_sigma_hu = gaussian_sigma_hu
        self.generator = generator or torch.Generator().manual_seed(0)
        self.level_factor = 1.0
        self.band_gains = calibration.get("band_gains")
        self.input_band_power = input_band_power  # the input's own NPS (noise_level.estimate_noise)
        self.local_level = local_level and kind in LEVELLED_KINDS  # the aligned fields end with a level map
        required = {"scaled": "amplitude", "spectral": "band_power_real", "synthetic": "band_power_real",
                    "model+hist": "residual_histogram"}
        if kind in required and required[kind] not in calibration:
            raise BundleError(f"This model bundle has no '{required[kind]}' calibration, needed for "
                              f"pseudo-noise '{kind}'. Use pseudo-noise 'paper' or re-create the bundle.")
        if kind == "fitted" and input_band_power is None:
            raise ValueError("pseudo-noise 'fitted' needs the input's estimated band powers")
        if kind == "hist" and not noise_histogram:
            raise BundleError("This model bundle has no noise histogram, needed for pseudo-noise 'hist'.")

    @property
    def needs_models(self) -> bool:
        return self.kind in MODEL_KINDS

    def _rand_index(self, high: int, shape, device) -> torch.Tensor:
        return torch.randint(high, shape, generator=self.generator).to(device)

    def _textured(self, band_power: Sequence[float], shape, device) -> torch.Tensor:
        """Gaussian noise with these band powers (its NPS per band)."""
        white = torch.randn(shape, generator=self.generator).to(device)
        return shape_noise(white, torch.as_tensor(band_power).sqrt().tolist(),
                           self.calibration.get("band_edges", DEFAULT_BAND_EDGES))

    def ensemble(self, model_noise: torch.Tensor) -> torch.Tensor:
        """Per-pixel random choice among the m model outputs (B, m, p, p) -> (B, 1, p, p)."""
        b, m, h, w = model_noise.shape
        choice = self._rand_index(m, (b, 1, h, w), model_noise.device)
        return torch.gather(model_noise, 1, choice)

    def split(self, aligned: Optional[torch.Tensor]):
        """(noise models' outputs or None, local level map or None) of the sampler's aligned fields."""
        if aligned is None or not self.local_level:
            return aligned, None
        return (aligned[:, :-1] if aligned.shape[1] > 1 else None), aligned[:, -1:]

    def fit_spectrum(self, aligned: torch.Tensor) -> None:
        """Refit the `spectral` gains on this input's own ensemble (of the aligned fields (B, a, p, p)):
        the noise models' output spectrum depends on the image, the target (the training LDCT - NDCT
        band powers) does not."""
        model_noise = self.split(aligned)[0]
        target = torch.as_tensor(self.calibration["band_power_real"])
        self.band_gains = gains_to_match(target, patch_band_power(self.ensemble(model_noise)))

    def draw(self, aligned: Optional[torch.Tensor], shape, device) -> torch.Tensor:
        """Z for a batch of patches of `shape` (B, 1, p, p), given the sampler's aligned fields."""
        model_noise, level_map = self.split(aligned)
        kind = self.kind
        if kind in ("paper", "scaled", "spectral"):
            z = self.ensemble(model_noise)
            if kind == "scaled":
                z = z * float(self.calibration["amplitude"])
            elif kind == "spectral":
                edges = self.calibration.get("band_edges", DEFAULT_BAND_EDGES)
                z = shape_noise(z, self.band_gains, edges)
        elif kind == "model+hist":
            pick = self._rand_index(model_noise.shape[1], (shape[0], 1, 1, 1), model_noise.device)
            z = torch.gather(model_noise, 1, pick.expand(-1, 1, *shape[-2:]))
            residual = sample_histogram(self.calibration["residual_histogram"], shape, self.generator, device)
            z = z + self.normalization.noise_to_model(residual)
        elif kind == "synthetic":
            z = self._textured(self.calibration["band_power_real"], shape, device)
        elif kind == "fitted":  # unit variance with the input's texture, at the training level
            z = self._textured(self.input_band_power, shape, device)
            z = z * self.normalization.noise_to_model(self.calibration.get("noise_std_soft_tissue_hu", 20.0))
        elif kind == "hist":
            z = self.normalization.noise_to_model(sample_histogram(self.noise_histogram, shape, self.generator, device))
        elif kind == "gaussian":
            z = torch.randn(shape, generator=self.generator).to(device)
            z = z * self.normalization.noise_to_model(self.gaussian_sigma_hu)
        else:  # config validation makes this unreachable
            raise ValueError(f"unknown pseudo-noise kind {kind!r}")
        if level_map is not None:
            z = z * level_map
        return z * self.level_factor if kind in LEVELLED_KINDS else z
