"""Giving the allocator's freed memory back to the system between inference batches (issue #28).

The network's buffers of a body box are sized by the box, and every slice's box has its own size.
glibc's allocator keeps the freed buffers of each earlier size in its heap, where the next sizes fit
only in part, so the process's resident memory grew with every new size: a 300-slice chest run
peaked 4.6 float32 volumes above the 16-slice run's (whole slices before: 1.9; the bar is 3).
`malloc_trim` returns the free pages after a batch whose size changed: 2.0 volumes (docs/SPEED.md),
for ~3 % more inference time on 40 real chest slices. Elsewhere (macOS, Windows, Linux without
glibc) the allocators differ and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable, Optional


def _malloc_trim() -> Optional[Callable[[int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None


_TRIM = _malloc_trim()


def give_back_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where that cannot be done here."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
