"""The detail measure (PSNR over the reference's edges) and the `clean` protocol's reference."""

import numpy as np
import pytest
from scipy import ndimage

from SelfSupCTDenoiseLib.data.clean_reference import consensus_reference
from SelfSupCTDenoiseLib.quality.metrics import EDGE_FRACTION, edge_mask, psnr, psnr_edges
from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise


@pytest.fixture(scope="module")
def reference():
    return clean_phantom(4, 128, seed=0).astype(np.float32)


def test_edge_mask_takes_the_strongest_tenth_of_the_body_per_slice(reference):
    mask = edge_mask(reference)
    body = reference > -500
    fractions = mask.sum(axis=(1, 2)) / body.sum(axis=(1, 2))
    assert np.allclose(fractions, EDGE_FRACTION, atol=0.01), fractions
    assert not (mask & ~body).any()
    clipped = np.clip(reference, -160, 240)
    for z in range(len(reference)):
        magnitude = np.hypot(ndimage.sobel(clipped[z], axis=0), ndimage.sobel(clipped[z], axis=1))
        assert magnitude[mask[z]].min() >= np.quantile(magnitude[body[z]], 1 - EDGE_FRACTION) - 1e-3


def test_smoothing_that_wins_the_psnr_loses_on_the_edges(reference):
    """Blur (no noise) scores 3.6 dB above 35 HU of noise over the whole image, and 5 dB below it on
    the edges: the detail measure cannot be won by smoothing."""
    blurred = ndimage.gaussian_filter(reference, (0, 0.5, 0.5))
    noisy = reference + np.random.default_rng(0).normal(0, 35, reference.shape).astype(np.float32)
    assert psnr(blurred, reference) > psnr(noisy, reference) + 3
    assert psnr_edges(noisy, reference) > psnr_edges(blurred, reference) + 4
    # noise is everywhere alike: on the edges it scores about what it scores on the whole image
    assert abs(psnr_edges(noisy, reference) - psnr(noisy, reference)) < 3


def test_edges_of_an_image_without_body_are_nan():
    air = np.full((2, 32, 32), -1000.0, np.float32)
    assert np.isnan(psnr_edges(air + 1, air))


@pytest.mark.parametrize("slices", [1, 6])
def test_consensus_reference_removes_most_of_the_noise_and_keeps_the_edges(slices):
    truth = clean_phantom(slices, 128, seed=2).astype(np.float32)
    sigma = 25.0
    ndct = truth + correlated_noise(truth.shape, sigma, seed=5, correlation_px=1.0).astype(np.float32)
    made = consensus_reference(ndct, sigma)
    assert made.shape == truth.shape and made.dtype == np.float32
    assert psnr(made, truth) > psnr(ndct, truth) + 5
    assert psnr_edges(made, truth) > psnr_edges(ndct, truth)
    in_plane = np.ones((1, 3, 3), bool)
    steps = np.abs(truth - ndimage.uniform_filter(truth, (1, 3, 3))) > 1e-3
    flat = ndimage.binary_erosion(~steps, in_plane, iterations=3) & (truth > -500)
    assert flat.sum() > 1000
    assert np.std((made - truth)[flat]) < 0.4 * sigma
