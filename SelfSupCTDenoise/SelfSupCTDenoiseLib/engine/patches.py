"""Random square crops, the draws shared by the adaptation's and the pre-training's patch samplers."""

from __future__ import annotations

from typing import Tuple

import torch


class RandomCrops:
    """Draws from one torch generator: integers, and crop corners (slice, row, column)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _corner(self, slices: int, height: int, width: int, crop: int) -> Tuple[int, int, int]:
        """A random slice and the top-left corner of a `crop` x `crop` square inside height x width."""
        return self._randint(slices), self._randint(height - crop + 1), self._randint(width - crop + 1)
