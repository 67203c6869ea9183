"""Channelized Hotelling observer: known analytic cases (white noise) and its behaviour with noise
and with a background known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SelfSupCTDenoiseLib.bench.lesions import disc_fraction
from SelfSupCTDenoiseLib.bench.observer import (auc_from_dprime, channel_width_mm, cho_dprime,
                                                laguerre_gauss_channels, roi_half_width_mm)

SPACING = (0.8, 0.8)


def _roi_side(diameter_mm: float) -> int:
    return 2 * int(math.ceil(roi_half_width_mm(diameter_mm) / SPACING[0])) + 1


def _gaussian_signal(side: int, width_mm: float, amplitude: float) -> np.ndarray:
    """A Gaussian blob exp(-pi r^2 / a^2): the first LG channel's shape, so the CHO is ideal for it."""
    c = (side - 1) / 2.0
    yy, xx = np.mgrid[:side, :side]
    r2 = ((yy - c) ** 2 + (xx - c) ** 2) * SPACING[0] ** 2
    return amplitude * np.exp(-math.pi * r2 / width_mm ** 2)


def _trials(signal: np.ndarray, sigma: float, n: int, seed: int):
    rng = np.random.default_rng(seed)
    present = signal + sigma * rng.standard_normal((n, *signal.shape))
    absent = sigma * rng.standard_normal((n, *signal.shape))
    return present, absent


def test_laguerre_gauss_channels_are_orthonormal_in_the_continuum():
    side = _roi_side(5.0)
    u = laguerre_gauss_channels((side, side), SPACING, channel_width_mm(5.0))
    gram = u @ u.T * SPACING[0] * SPACING[1]  # pixel sum x area ~ integral over the plane
    assert u.shape == (6, side * side)
    assert np.allclose(gram, np.eye(6), atol=0.02)


def test_white_noise_dprime_matches_the_prewhitening_value():
    """Signal in the span of the channels, white noise: CHO d' = ideal d' = ||s|| / sigma."""
    side, sigma = _roi_side(5.0), 20.0
    signal = _gaussian_signal(side, channel_width_mm(5.0), amplitude=8.0)
    ideal = float(np.sqrt((signal ** 2).sum())) / sigma
    present, absent = _trials(signal, sigma, 1500, seed=1)
    channels = laguerre_gauss_channels((side, side), SPACING, channel_width_mm(5.0))
    result = cho_dprime(present, absent, channels, n_bootstrap=200)
    assert 1.0 < ideal < 4.0
    assert result["dprime"] == pytest.approx(ideal, rel=0.08)
    assert abs(result["dprime"] - ideal) < 3 * result["dprime_se"]
    assert result["auc"] == pytest.approx(auc_from_dprime(result["dprime"]))


def test_channels_capture_most_of_a_disc_in_white_noise():
    """The channel width rule: >= 90 % of the ideal observer's d'^2 for each lesion size (analytic)."""
    for diameter in (3.0, 5.0, 10.0):
        side = _roi_side(diameter)
        s = disc_fraction((side, side), ((side - 1) / 2, (side - 1) / 2), diameter, SPACING).ravel().astype(float)
        u = laguerre_gauss_channels((side, side), SPACING, channel_width_mm(diameter))
        us = u @ s
        efficiency = us @ np.linalg.solve(u @ u.T, us) / (s @ s)  # white noise: K = sigma^2 U U^T
        assert 0.9 <= efficiency <= 1.0 + 1e-9, (diameter, efficiency)


def test_more_noise_gives_lower_dprime():
    side = _roi_side(5.0)
    signal = _gaussian_signal(side, channel_width_mm(5.0), amplitude=8.0)
    channels = laguerre_gauss_channels((side, side), SPACING, channel_width_mm(5.0))
    low = cho_dprime(*_trials(signal, 15.0, 400, seed=2), channels)["dprime"]
    high = cho_dprime(*_trials(signal, 30.0, 400, seed=3), channels)["dprime"]
    assert high == pytest.approx(low / 2, rel=0.25)  # d' goes as 1 / sigma
    assert high < 0.75 * low


def test_background_known_exactly_removes_the_anatomy_from_the_covariance():
    """Fixed but very different backgrounds per position: grouped by position the CHO sees only the
    noise (ideal value); pooled as independent trials the backgrounds swamp the signal."""
    side, sigma = _roi_side(5.0), 20.0
    signal = _gaussian_signal(side, channel_width_mm(5.0), amplitude=8.0)
    ideal = float(np.sqrt((signal ** 2).sum())) / sigma
    rng = np.random.default_rng(4)
    positions, repeats = 60, 6
    backgrounds = 200.0 * rng.standard_normal((positions, 1, side, side)).cumsum(axis=2)  # strong structure
    present = (backgrounds + signal + sigma * rng.standard_normal((positions, repeats, side, side))).reshape(-1, side, side)
    absent = (backgrounds + sigma * rng.standard_normal((positions, repeats, side, side))).reshape(-1, side, side)
    groups = np.repeat(np.arange(positions), repeats)
    channels = laguerre_gauss_channels((side, side), SPACING, channel_width_mm(5.0))
    known = cho_dprime(present, absent, channels, SPACING, groups, groups, n_bootstrap=100)
    pooled = cho_dprime(present, absent, channels)
    assert known["dprime"] == pytest.approx(ideal, rel=0.1)
    assert known["n_groups"] == positions and known["dprime_se"] > 0
    assert pooled["dprime"] < 0.5 * ideal


def test_too_few_trials_are_refused():
    side = _roi_side(3.0)
    channels = laguerre_gauss_channels((side, side), SPACING, channel_width_mm(3.0))
    present, absent = _trials(np.zeros((side, side)), 1.0, 4, seed=5)
    with pytest.raises(ValueError, match="too few"):
        cho_dprime(present, absent, channels)
