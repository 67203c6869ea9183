"""Small array helpers shared by the run and the measures: slab-wise walks and evenly spaced slices."""

from __future__ import annotations

from typing import Any, List

import numpy as np

#: Slices per piece where a whole volume is processed piecewise, so that temporaries stay small.
SLAB_SLICES = 8


def slabs(array: np.ndarray) -> List[Any]:
    """Indices that walk `array` along its first axis `SLAB_SLICES` at a time (all of a 0-d array)."""
    if np.ndim(array) == 0:
        return [...]
    return [slice(start, start + SLAB_SLICES) for start in range(0, len(array), SLAB_SLICES)]


def all_finite(array: np.ndarray) -> bool:
    """`np.isfinite(array).all()` without a volume-sized temporary."""
    return all(np.isfinite(array[part]).all() for part in slabs(array))



def evenly_spaced(n_total: int, n_pick: int) -> np.ndarray:
    """Up to `n_pick` distinct indices spread evenly over range(n_total), first and last included."""
    return np.unique(np.linspace(0, n_total - 1, min(n_total, n_pick)).round().astype(int))


def round_into(values: np.ndarray, dtype) -> np.ndarray:
    """`values` rounded to the nearest integer and clipped to the range of the integer `dtype`, as `dtype`."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)
