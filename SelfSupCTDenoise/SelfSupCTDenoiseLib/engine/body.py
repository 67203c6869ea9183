"""Where the body is in each slice: the box the denoiser runs on (issue #28).

Air around the patient, the table and blankets are a third to two thirds of a 512x512 chest slice.
The body is what is denser than air, cleared of structures thinner than about a centimetre (table
shells, blanket folds, cables) and of specks; its box, widened by the network's receptive radius,
holds every pixel the network needs, so the body's output is the whole slice's to float rounding
(numpy and scipy only).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .ct_array import HU_AIR, padding_mask

#: Body tissue (lung walls, fat, skin) is denser than this; air with its noise is not.
BODY_ABOVE_HU = -500.0
#: The mask is made on means of blocks of this many pixels a side: noise averages out in them.
BLOCK = 4
#: Parts narrower than this many blocks (12 pixels, about 9 mm at 0.75 mm) are not body: table
#: shells, blanket folds, cables. An arm is 60 or more pixels across.
OPENING_BLOCKS = 3
#: Parts smaller than this fraction of the largest are not body: on real chest CT what is left of the
#: table after the opening is at most 1.3 % of the body, an arm about 10 %.
MIN_PART = 0.02


def body_box(slice_hu: np.ndarray, margin: int):
    """(y0, y1, x0, x1): the box of the body in a (y, x) HU slice, `margin` pixels wider on each
    side, within the slice; the whole slice when no body is found (nothing is left out unseen)."""
    h, w = slice_hu.shape
    whole = (0, h, 0, w)
    hb, wb = -(-h // BLOCK), -(-w // BLOCK)
    slice_hu = np.where(padding_mask(slice_hu), np.float32(HU_AIR), np.asarray(slice_hu, np.float32))
    padded = np.pad(slice_hu, ((0, hb * BLOCK - h), (0, wb * BLOCK - w)), mode="edge")
    dense = padded.reshape(hb, BLOCK, wb, BLOCK).mean(axis=(1, 3)) > BODY_ABOVE_HU
    dense = ndimage.binary_opening(dense, np.ones((OPENING_BLOCKS, OPENING_BLOCKS), bool))
    labels, count = ndimage.label(dense)
    if not count:
        return whole
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(np.isin(labels, 1 + np.flatnonzero(sizes >= MIN_PART * sizes.max())))
    # one block more on each side: a block at the body's edge may hold skin yet average as air
    wide = margin + BLOCK
    return (max(0, ys.min() * BLOCK - wide), min(h, (ys.max() + 1) * BLOCK + wide),
            max(0, xs.min() * BLOCK - wide), min(w, (xs.max() + 1) * BLOCK + wide))


def body_boxes(volume_hu: np.ndarray, margin: int) -> np.ndarray:
    """(z, 4) int array of `body_box` per slice of a (z, y, x) HU volume."""
    return np.array([body_box(s, margin) for s in volume_hu], dtype=int).reshape(-1, 4)


def box_fraction(boxes: np.ndarray, shape) -> float:
    """The share of the volume's pixels inside the boxes (1 = whole slices)."""
    areas = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    return float(areas.sum() / (len(boxes) * shape[-2] * shape[-1]))


#: Slices the panel's estimate looks at (`body_share`): ~4 ms each on 512x512.
SHARE_SLICES = 32


def body_share(volume_hu: np.ndarray, margin: int, slices: int = SHARE_SLICES) -> float:
    """`box_fraction` of at most `slices` evenly spaced slices: the share of the volume a run denoises,
    known before it runs (the panel's time estimate)."""
    index = np.unique(np.linspace(0, len(volume_hu) - 1, min(slices, len(volume_hu))).round().astype(int))
    return box_fraction(body_boxes(volume_hu[index], margin), volume_hu.shape)
