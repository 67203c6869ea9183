import numpy as np
import pytest
import torch

from SelfSupCTDenoiseLib.adapt import PatchSampler, adapt
from SelfSupCTDenoiseLib.config import AdaptConfig
from SelfSupCTDenoiseLib.noise_level import estimate_noise
from SelfSupCTDenoiseLib.pseudo import PseudoNoiseSource
from SelfSupCTDenoiseLib.spectrum import band_power, shape_noise


def make_setup(bundle, config, seed=0):
    from SelfSupCTDenoiseLib.phantom import noisy_pair

    ldct, _ = noisy_pair(4, 64, 30.0, seed=5)
    norm = bundle.normalization
    pool = torch.from_numpy(norm.to_model(ldct))[:, None]
    with torch.no_grad():
        noise = torch.cat([m(pool) for m in bundle.build_noise_models()], dim=1)
    generator = torch.Generator().manual_seed(seed)
    sampler = PatchSampler(pool, noise, config.patch_size, config.augment, generator)
    estimate = estimate_noise(ldct, bundle.calibration["band_power_real"])
    source = PseudoNoiseSource(config.pseudo_noise, bundle.calibration, norm, bundle.noise_histogram,
                               config.gaussian_sigma_hu, generator, input_band_power=estimate.band_power)
    return sampler, source


def test_teacher_is_updated_exactly_every_period(tiny_bundle):
    config = AdaptConfig(steps=23, period=5, batch_size=2, patch_size=32)
    model, history = adapt(tiny_bundle.build_denoiser(), *make_setup(tiny_bundle, config), config)
    assert history.teacher_updates == [5, 10, 15, 20]
    assert len(history.losses) == 23


def test_no_teacher_update_ablation_never_updates(tiny_bundle):
    config = AdaptConfig(steps=10, period=5, batch_size=2, patch_size=32, teacher_update=False)
    _, history = adapt(tiny_bundle.build_denoiser(), *make_setup(tiny_bundle, config), config)
    assert history.teacher_updates == []


def test_adaptation_is_deterministic_on_cpu_and_leaves_the_input_model_alone(tiny_bundle):
    config = AdaptConfig(steps=6, period=3, batch_size=2, patch_size=32)
    base = tiny_bundle.build_denoiser()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    a, _ = adapt(base, *make_setup(tiny_bundle, config), config)
    b, _ = adapt(base, *make_setup(tiny_bundle, config), config)
    c, _ = adapt(base, *make_setup(tiny_bundle, config, seed=1), config)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in before)
    assert any(not torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in before)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("kind", ["paper", "scaled", "spectral", "synthetic", "fitted", "gaussian", "hist", "model+hist"])
def test_every_pseudo_noise_kind_draws_zero_mean_noise_of_plausible_level(tiny_bundle, kind):
    config = AdaptConfig(pseudo_noise=kind, patch_size=32, gaussian_sigma_hu=25.0)
    sampler, source = make_setup(tiny_bundle, config)
    x, noise = sampler.sample(64)
    z = source.draw(noise if source.needs_models else None, x.shape, x.device) * tiny_bundle.normalization.scale
    assert z.shape == x.shape
    assert abs(float(z.mean())) < 3.0
    assert 3.0 < float(z.std()) < 60.0
    if kind == "gaussian":
        assert float(z.std()) == pytest.approx(25.0, rel=0.05)


def test_spectral_pseudo_noise_has_the_real_noise_spectrum_shape(tiny_bundle):
    # The level is set per input (pipeline); the shape across bands is what spectral shaping fixes.
    cal = tiny_bundle.calibration
    config = AdaptConfig(pseudo_noise="spectral", patch_size=32)  # the calibration patch size
    sampler, source = make_setup(tiny_bundle, config)
    source.fit_spectrum(sampler.sample(128)[1])
    x, noise = sampler.sample(256)  # another sample than the fit

    def shape(power):
        power = torch.as_tensor(power)
        return power / power.sum()

    real = shape(cal["band_power_real"])
    spectral = shape(band_power(source.draw(noise, x.shape, x.device)))
    paper = shape(band_power(source.ensemble(noise)))
    assert torch.all((spectral / real > 0.75) & (spectral / real < 1.33)), spectral / real
    assert (spectral / real - 1).abs().max() < 0.5 * (paper / real - 1).abs().max()


def test_shape_noise_with_unit_gains_is_identity():
    z = torch.randn(4, 1, 32, 32)
    assert torch.allclose(shape_noise(z, [1.0] * 8), z, atol=1e-5)


def test_rescale_augmentation_resamples_patches_to_patch_size(tiny_bundle):
    config = AdaptConfig(augment="rescale", patch_size=32)
    sampler, _ = make_setup(tiny_bundle, config)
    x, noise = sampler.sample(3)
    assert x.shape == (3, 1, 32, 32) and noise.shape == (3, 3, 32, 32)
