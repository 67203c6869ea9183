"""The reference-free noise estimate (level and texture) on phantoms with known noise."""

import numpy as np
import pytest
import torch

from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.noise_level import estimate_noise, texture
from SelfSupCTDenoiseLib.engine.normalization import Normalization
from SelfSupCTDenoiseLib.engine.pseudo import PseudoNoiseSource
from SelfSupCTDenoiseLib.engine.spectrum import DEFAULT_BAND_EDGES, patch_band_power, shape_noise


def patches(noise, size=64):
    return torch.from_numpy(np.ascontiguousarray(noise[:, :size, :size]))


@pytest.fixture(scope="module")
def training_texture():
    """Band powers of the smooth (FBP-like) noise a bundle would have been trained on."""
    return patch_band_power(patches(correlated_noise((8, 64, 64), 1.0, seed=3))).tolist()


def textured_noise(shape, texture_band_power, sigma, seed):
    """Gaussian noise of std `sigma` with these band powers (CT noise of a smooth kernel)."""
    white = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    noise = shape_noise(white, torch.as_tensor(texture_band_power).sqrt().tolist()).numpy()
    return (noise / noise.std() * sigma).astype(np.float32)


@pytest.fixture(scope="module")
def phantom():
    return clean_phantom(6, 96, seed=4)


@pytest.mark.parametrize("sigma", [15.0, 40.0, 100.0])
def test_level_of_training_like_noise_is_measured_at_any_dose(phantom, training_texture, sigma):
    noisy = phantom + textured_noise(phantom.shape, training_texture, sigma, seed=8)
    estimate = estimate_noise(noisy, training_texture)
    assert estimate.std_hu == pytest.approx(sigma, rel=0.12)
    assert estimate.sharpness <= 0.15


def test_sharp_kernel_noise_is_recognised_and_its_level_measured(phantom, training_texture):
    white = np.random.default_rng(2).standard_normal(phantom.shape).astype(np.float32) * 40.0
    estimate = estimate_noise(phantom + white, training_texture)
    assert estimate.std_hu == pytest.approx(40.0, rel=0.12)
    assert estimate.sharpness >= 0.5


def shepp_logan_noise(shape, sigma, seed):
    """Noise of FBP with the Shepp-Logan kernel (ramp x sinc^2 NPS): sharper than the training
    texture and not a member of the estimator's family."""
    f = np.fft.fftfreq(shape[-1])
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    nps = np.minimum(r, 0.5) * np.sinc(np.minimum(r, 0.5)) ** 2
    white = np.random.default_rng(seed).standard_normal(shape)
    noise = np.fft.ifft2(np.fft.fft2(white) * np.sqrt(nps)).real
    return (noise / noise.std() * sigma).astype(np.float32)


def test_fitted_pseudo_noise_has_the_inputs_nps_where_the_training_texture_does_not(phantom, training_texture):
    """Sharp-kernel input noise, smooth training noise: `fitted` follows the input, `synthetic` cannot."""
    sharp = shepp_logan_noise(phantom.shape, 40.0, seed=5)
    estimate = estimate_noise(phantom + sharp, training_texture)
    real = patch_band_power(patches(sharp))
    norm = Normalization()
    calibration = {"band_power_real": training_texture, "band_edges": DEFAULT_BAND_EDGES,
                   "noise_std_soft_tissue_hu": 40.0}

    def ratio(kind):
        source = PseudoNoiseSource(kind, calibration, norm, input_band_power=estimate.band_power,
                                   generator=torch.Generator().manual_seed(0))
        z = source.draw(None, (256, 1, 64, 64), "cpu") * norm.scale
        z = z / z.std() * 40.0  # compare shapes: the level is set per input by the pipeline
        return patch_band_power(z) / real

    fitted, synthetic = ratio("fitted"), ratio("synthetic")
    assert torch.all((fitted > 0.5) & (fitted < 1.6)), fitted
    assert (fitted.log().abs().max() < 0.5 * synthetic.log().abs().max()), (fitted, synthetic)


def test_texture_family_ends_and_unit_variance(training_texture):
    smooth, ramp = texture(training_texture, 0.0), texture(training_texture, 1.0)
    assert np.allclose(smooth / smooth.sum(), np.asarray(training_texture) / np.sum(training_texture))
    assert ramp[-2] > ramp[1] and smooth[-1] < smooth[1]  # a ramp rises, the smooth kernel falls


def test_no_soft_tissue_gives_no_estimate():
    air = np.full((2, 64, 64), -1000.0, np.float32) + np.random.default_rng(0).normal(0, 20, (2, 64, 64)).astype(np.float32)
    assert np.isnan(estimate_noise(air).std_hu)



@pytest.fixture(scope="module")
def wide_phantom():
    """A phantom large against the level map's 12-pixel window."""
    return clean_phantom(2, 224, seed=4)


def half_noisier(phantom, training_texture, factor):
    """The phantom with training-like noise whose std is `factor` times higher in the right half
    (CT noise is not stationary: it rises behind bone and across the widest paths)."""
    noise = textured_noise(phantom.shape, training_texture, 15.0, seed=9)
    noise[..., phantom.shape[-1] // 2:] *= factor
    return phantom + noise


def test_local_level_map_follows_where_the_noise_is_higher(wide_phantom, training_texture):
    from SelfSupCTDenoiseLib.engine.noise_level import flat_soft_tissue_mask, local_level_map

    level = local_level_map(half_noisier(wide_phantom, training_texture, 2.0))
    assert level.shape == wide_phantom.shape and np.isfinite(level).all()
    tissue = np.stack([flat_soft_tissue_mask(s) for s in wide_phantom])
    half = wide_phantom.shape[-1] // 2
    left, right = tissue.copy(), tissue.copy()
    left[..., half - 30:], right[..., :half + 30] = False, False  # away from the step
    assert level[right].mean() / level[left].mean() == pytest.approx(2.0, rel=0.15)
    assert level[tissue].mean() == pytest.approx(1.0, rel=0.1)  # relative: the estimate sets the level


def test_local_level_map_is_flat_for_stationary_noise(wide_phantom, training_texture):
    from SelfSupCTDenoiseLib.engine.noise_level import flat_soft_tissue_mask, local_level_map

    level = local_level_map(half_noisier(wide_phantom, training_texture, 1.0))
    tissue = np.stack([flat_soft_tissue_mask(s) for s in wide_phantom])
    assert np.percentile(level[tissue], 5) > 0.8 and np.percentile(level[tissue], 95) < 1.2
