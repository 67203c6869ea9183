"""Lesion inserter: discs at known positions with known contrast, in soft tissue, apart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SelfSupCTDenoiseLib.bench.lesions import Lesion, core_mask, disc_fraction, insert_lesions, place_lesions
from SelfSupCTDenoiseLib.bench.observer import roi_half_width_mm
from SelfSupCTDenoiseLib.data.phantom import clean_phantom
from SelfSupCTDenoiseLib.engine.noise_level import soft_tissue_mask
from SelfSupCTDenoiseLib.errors import InputError

SPACING = (0.7, 0.7)


@pytest.mark.parametrize("diameter, contrast", [(3.0, 5.0), (5.0, -10.0), (10.0, 20.0)])
def test_inserted_disc_has_the_requested_contrast_in_its_core_and_nothing_elsewhere(diameter, contrast):
    base = np.full((96, 96), 40.0, np.float32)
    lesion = Lesion(50, 41, diameter, contrast)
    out = insert_lesions(base, [lesion], SPACING)
    added = out - base
    fraction = disc_fraction(base.shape, (50, 41), diameter, SPACING)
    core = core_mask(fraction)
    assert abs(added[core].mean() - contrast) < 0.5
    # partial volume: the added HU integrate to contrast x disc area
    assert added.sum() * SPACING[0] * SPACING[1] == pytest.approx(contrast * math.pi * diameter ** 2 / 4, rel=0.02)
    yy, xx = np.mgrid[:96, :96]
    beyond = np.hypot((yy - 50) * SPACING[0], (xx - 41) * SPACING[1]) > diameter / 2 + SPACING[0]
    assert np.all(added[beyond] == 0.0)
    assert np.all(base == 40.0)  # the input is not touched


def test_placed_lesions_are_in_soft_tissue_and_out_of_each_others_rois():
    image = clean_phantom(1, 160, seed=3)[0]
    spacing = (1.0, 1.0)
    conditions = [(d, c) for d in (3.0, 5.0, 10.0) for c in (-10.0, 20.0)]
    lesions = place_lesions(image, spacing, conditions, roi_half_width_mm, np.random.default_rng(0))
    assert [(l.diameter_mm, l.contrast_hu) for l in lesions] == conditions
    tissue = soft_tissue_mask(image)
    for lesion in lesions:
        disc = disc_fraction(image.shape, (lesion.y, lesion.x), lesion.diameter_mm, spacing) > 0
        assert tissue[disc].all()
        assert np.all((image[disc] > -30) & (image[disc] < 150))  # soft tissue proper, not the fat ring
        half = roi_half_width_mm(lesion.diameter_mm)
        assert half <= lesion.y <= image.shape[0] - 1 - half and half <= lesion.x <= image.shape[1] - 1 - half
        for other in lesions:
            if other is not lesion:
                distance = math.hypot(lesion.y - other.y, lesion.x - other.x)
                assert distance >= half + other.diameter_mm / 2  # the other disc is outside this ROI


@pytest.mark.parametrize("seed", range(6))
def test_no_disc_reaches_into_another_lesions_square_roi(seed):
    """The ROI is a square: a disc near its corner is inside it though farther than half + radius."""
    image = clean_phantom(1, 128, seed=seed)[0]
    spacing = (1.0, 1.0)
    conditions = [(d, c) for d in (3.0, 5.0, 10.0) for c in (-5.0, 20.0)]
    lesions = place_lesions(image, spacing, conditions, roi_half_width_mm, np.random.default_rng(seed))
    for lesion in lesions:
        hy = hx = int(math.ceil(roi_half_width_mm(lesion.diameter_mm)))
        box = (slice(lesion.y - hy, lesion.y + hy + 1), slice(lesion.x - hx, lesion.x + hx + 1))
        others = insert_lesions(np.zeros(image.shape, np.float32), [o for o in lesions if o is not lesion], spacing)
        assert not others[box].any(), (lesion, seed)


def test_placement_refuses_when_the_lesions_do_not_fit():
    image = clean_phantom(1, 64, seed=3)[0]
    with pytest.raises(InputError, match="No room for a 10 mm lesion"):
        place_lesions(image, (1.0, 1.0), [(10.0, 5.0)] * 12, roi_half_width_mm, np.random.default_rng(0))
