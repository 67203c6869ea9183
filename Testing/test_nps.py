"""Noise power spectrum (ICRU 87) and noise-texture statistics on synthetic noise (numpy only)."""

import numpy as np
import pytest
from scipy import ndimage

from SelfSupCTDenoiseLib.quality import nps


def _white(n=16, size=64, sigma=10.0, seed=0):
    return np.random.default_rng(seed).normal(0.0, sigma, (n, size, size))


def _lowpass(n=16, size=64, sigma=10.0, seed=0, blur=1.5):
    rois = np.stack([ndimage.gaussian_filter(r, blur, mode="wrap") for r in _white(n, size, 1.0, seed)])
    return rois * (sigma / rois.std())


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 0.7), (0.5, 1.25)])
def test_nps_integral_equals_variance(spacing):
    rois = _lowpass(size=48) + 30.0  # an offset: each ROI's mean is removed
    spectrum, fy, fx = nps.nps_2d(rois, spacing)
    variance = np.mean([r.var() for r in rois])
    assert nps.nps_integral(spectrum, fy, fx) == pytest.approx(variance, rel=1e-9)


def test_nps_units_scale_with_pixel_area():
    rois = _white()
    s1, *_ = nps.nps_2d(rois, (1.0, 1.0))
    s2, *_ = nps.nps_2d(rois, (0.5, 0.5))
    np.testing.assert_allclose(s2, s1 * 0.25)


def test_white_noise_has_flat_nps_at_sigma2_times_pixel_area():
    sigma, dx = 10.0, 0.8
    radial, freqs = nps.radial_nps(_white(n=32, sigma=sigma), (dx, dx))
    level = sigma ** 2 * dx * dx
    assert freqs[-1] == pytest.approx(0.5 / dx)             # up to Nyquist, in mm^-1
    inner = radial[1:]                                    # the DC bin is emptied by mean removal
    assert np.mean(inner) == pytest.approx(level, rel=0.05)
    assert np.max(np.abs(inner / level - 1.0)) < 0.35     # flat within the estimate's scatter
    # white noise: band powers follow the ring areas
    fractions = nps.band_fractions(*nps.radial_nps_pixels(_white(n=32)), [0.0, 0.25, 0.5])
    assert fractions[1] / fractions[0] == pytest.approx(3.0, rel=0.15)


def test_radial_integral_close_to_variance_for_band_limited_noise():
    rois = _lowpass(n=32, blur=2.0)
    radial, freqs = nps.radial_nps(rois, (0.7, 0.7))
    roi_variance = np.mean([r.var() for r in rois])
    assert nps.radial_integral(radial, freqs) == pytest.approx(roi_variance, rel=0.03)
    # white noise keeps power in the corners beyond Nyquist: the disc holds about pi/4 of it
    white = _white(n=32)
    r_w, f_w = nps.radial_nps(white)
    assert nps.radial_integral(r_w, f_w) / white.var() == pytest.approx(np.pi / 4, rel=0.05)


def test_nps_band_variance_partitions_the_radial_integral():
    radial, freqs = nps.radial_nps_pixels(_lowpass())
    edges = [0.0, 0.1, 0.2, 0.3, 0.5]
    power = nps.nps_band_variance(radial, freqs, edges)
    assert power.sum() == pytest.approx(nps.radial_integral(radial, freqs))
    assert nps.band_fractions(radial, freqs, edges).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        nps.nps_band_variance(radial, freqs, [0.2, 0.1])


def test_peak_frequency_of_band_pass_noise():
    white = _white(n=32, size=64, sigma=1.0)
    band = np.stack([ndimage.gaussian_filter(r, 1.0, mode="wrap") - ndimage.gaussian_filter(r, 3.0, mode="wrap")
                     for r in white])
    radial, freqs = nps.radial_nps_pixels(band)
    assert 0.05 < nps.peak_frequency(radial, freqs) < 0.2
    assert nps.mean_frequency(radial, freqs) < nps.mean_frequency(*nps.radial_nps_pixels(white))


def test_lag1_autocorrelation_white_vs_correlated():
    assert abs(nps.lag1_autocorrelation(_white(n=4)[0])) < 0.05
    assert nps.lag1_autocorrelation(_lowpass(n=2)) > 0.5
    mask = np.zeros((64, 64), bool)
    mask[10:50, 10:50] = True
    assert abs(nps.lag1_autocorrelation(_white(n=1)[0], mask)) < 0.1


def test_extract_rois_respects_mask_and_plane_detrend():
    image = np.arange(64 * 64, dtype=float).reshape(64, 64)
    mask = np.zeros_like(image, bool)
    mask[:32, :] = True
    rois = nps.extract_rois(image, 16, mask)
    assert rois.shape == (8, 16, 16)                        # 2 rows x 4 columns inside the mask
    assert rois.max() < 32 * 64
    assert len(nps.extract_rois(image, 16, mask, stride=8, max_rois=5)) == 5
    with pytest.raises(ValueError):
        nps.extract_rois(image, 16, np.zeros_like(mask))
    ramp = rois + np.random.default_rng(0).normal(0, 1.0, rois.shape)
    plane, fy, fx = nps.nps_2d(ramp, detrend="plane")
    assert nps.nps_integral(plane, fy, fx) == pytest.approx(1.0, rel=0.15)   # only the noise is left
