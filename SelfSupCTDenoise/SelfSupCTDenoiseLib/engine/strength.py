"""The strength control and the cast back to the input's dtype (numpy only; what a run and the
Slicer panel's re-blend need).

- `strength_blend`, `STRENGTH_LEVELS`: output = X - s * (X - f(X)); strength 0 returns the input.
- `cast_like_input`: integer inputs keep their dtype (rounded, clipped only to the dtype's range).
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np

from ..errors import InputError, SelfSupCTDenoiseError
from .arrays import all_finite, round_into, slabs

#: Named strengths, like the low/medium/high levels of vendor deep-learning reconstructions.
#: At strength s the output keeps (1 - s) of the removed noise, so its noise SD is about
#: (1 - s) * SD(input) + s * SD(full result) in uniform regions: "low" removes about half the noise
#: (a familiar, grainier texture), "medium" three quarters, "high" everything the model removes.
STRENGTH_LEVELS: Dict[str, float] = {"low": 0.5, "medium": 0.75, "high": 1.0}


def resolve_strength(value: Union[str, float]) -> float:
    """A strength in [0, 1] from a number, a numeric string or a level name of `STRENGTH_LEVELS`."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in STRENGTH_LEVELS:
            return float(STRENGTH_LEVELS[key])
        try:
            value = float(key)
        except ValueError:
            raise InputError(f"Strength {value!r} is neither a number in [0, 1] nor one of "
                             f"{', '.join(STRENGTH_LEVELS)}.") from None
    strength = float(value)
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"Strength {strength} is outside [0, 1].")
    return strength



def strength_blend(input_hu: np.ndarray, full_denoised: np.ndarray, strength: Union[str, float],
                   out: Optional[np.ndarray] = None) -> np.ndarray:
    """Output = X - s * (X - f(X)); s = 0 is the input bitwise, s = 1 the full result.

    A new array: float32 (float64 inputs stay float64); integer inputs are blended in float32, which
    holds every int16 exactly: use `cast_like_input` to go back to the input's dtype. With `out` (which
    may be `full_denoised` itself) the result is written there, in that dtype, slab by slab.
    """
    s = resolve_strength(strength)
    if input_hu.shape != full_denoised.shape:
        raise InputError(f"Input {input_hu.shape} and denoised {full_denoised.shape} differ in shape.")
    if out is None:
        out = np.empty(input_hu.shape, input_hu.dtype if input_hu.dtype == np.float64 else np.float32)
    dtype = out.dtype
    for part in slabs(out):
        # The end points are copies, not arithmetic, so that they are exact (no -0.0, NaN or rounding).
        if s == 1.0:
            out[part] = full_denoised[part]
            continue
        blended = np.array(input_hu[part], dtype=dtype, copy=True)
        if s != 0.0:
            removed = blended - full_denoised[part].astype(dtype, copy=False)
            removed *= dtype.type(s)
            blended -= removed
        out[part] = blended
    return out


def cast_like_input(array: np.ndarray, input_dtype: Union[np.dtype, type, str]) -> np.ndarray:
    """Cast a float result to the input's dtype: integers are rounded and clipped to the dtype's
    range only (air at -1024 and bone stay as they are), slab by slab; floats are cast (float32 stays
    a view-free copy only when needed)."""
    dtype, array = np.dtype(input_dtype), np.asarray(array)
    if np.issubdtype(dtype, np.integer):
        if not all_finite(array):
            raise SelfSupCTDenoiseError("The result contains NaN or infinite values; nothing was written.")
        out = np.empty(array.shape, dtype)
        for part in slabs(array):
            out[part] = round_into(array[part], dtype)
        return out
    if np.issubdtype(dtype, np.floating):
        return array.astype(dtype, copy=False)
    raise InputError(f"Cannot write a CT result as {dtype}: expected an integer or float type.")

