"""Intensity scaling between HU and the networks' units (a parameter the paper leaves open).

x = (HU - offset) / scale. The default (offset -1024, scale 1000) maps air to ~0 and water to ~1,
so 25 HU of noise is 0.025: well within float precision and Adam's comfortable range. A bundle
records the values it was trained with; inference always uses the bundle's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict


@dataclass(frozen=True)
class Normalization:
    offset: float = -1024.0
    scale: float = 1000.0

    def to_model(self, hu):
        return (hu - self.offset) / self.scale

    def to_hu(self, x):
        return x * self.scale + self.offset

    def noise_to_model(self, noise_hu):
        """Noise (a difference of HU) has no offset."""
        return noise_hu / self.scale

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)
