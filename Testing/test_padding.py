"""Scanner padding outside the field of view (-3024, -2048 HU): kept from the network and from every
statistic, and given back bit for bit."""

import numpy as np
import pytest
import SimpleITK as sitk

from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.engine.run import denoise_array
from SelfSupCTDenoiseLib.files.denoise_file import denoise_file

FAST = dict(batch_size=8, patch_size=32, period=2, lr=3e-4, device="cpu")
SIZE, FOV_RADIUS = 128, 52


def scan_circle():
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    return xx ** 2 + yy ** 2 <= FOV_RADIUS ** 2


def padded_phantom(pad=-3024):
    """4 slices of 128 x 128: a body with soft tissue, fat, lungs and bone in air, noise everywhere in
    the scan circle, `pad` outside it (body 8-12 px from its edge); and the same with air there."""
    volume = np.full((4, SIZE, SIZE), -1000.0, np.float32)
    volume[:, 16:112, 16:112] = clean_phantom(4, 96, seed=5)
    volume = np.round(volume + correlated_noise(volume.shape, 30.0, seed=6))
    inside = np.broadcast_to(scan_circle(), volume.shape)
    return np.where(inside, volume, pad).astype(np.int16), np.where(inside, volume, -1024).astype(np.int16), inside


@pytest.mark.parametrize("steps", [0, 4])
def test_padding_comes_back_exactly_and_the_fov_as_if_it_were_air(tiny_bundle, steps):
    padded, air, inside = padded_phantom()
    config = AdaptConfig(steps=steps, **FAST)
    result = denoise_array(padded, tiny_bundle, config)
    reference = denoise_array(air, tiny_bundle, config)
    outside = ~inside
    np.testing.assert_array_equal(result.denoised[outside], padded[outside].astype(np.float32))
    np.testing.assert_array_equal(result.full_strength[outside], padded[outside].astype(np.float32))
    assert not result.noise_map[outside].any()
    np.testing.assert_allclose(result.denoised[inside], reference.denoised[inside], atol=0.5)
    # the statistics ignore the padding: the same noise estimate (and guard, when adapting)
    assert result.info["run"]["estimated_noise_std_hu"] == reference.info["run"]["estimated_noise_std_hu"]
    assert result.info["run"]["guard"] == reference.info["run"]["guard"]


@pytest.mark.parametrize("pad", [-3024, -2048])
def test_padded_file_keeps_its_padding_bit_for_bit(tiny_bundle, tmp_path, pad):
    padded, _, inside = padded_phantom(pad)
    image = sitk.GetImageFromArray(padded)
    image.SetSpacing((0.8, 0.8, 2.0))
    source, out, noise = tmp_path / "in.nrrd", tmp_path / "out.nrrd", tmp_path / "noise.nrrd"
    sitk.WriteImage(image, str(source), True)
    denoise_file(source, out, noise, tiny_bundle.path, AdaptConfig(steps=0, **FAST))
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    removed = sitk.GetArrayFromImage(sitk.ReadImage(str(noise)))
    assert result.dtype == np.int16
    np.testing.assert_array_equal(result[~inside], padded[~inside])
    assert not removed[~inside].any()
    assert np.abs(removed[inside]).max() < 300  # the field of view was denoised, not restored


def test_noise_in_air_is_not_padding():
    """Low-dose noise in air reaches far below -1024 HU; it is denoised like the rest."""
    from SelfSupCTDenoiseLib.engine.ct_array import padding_mask

    volume = clean_phantom(2, 64) + correlated_noise((2, 64, 64), 120.0, seed=2)
    assert volume.min() < -1300
    assert not padding_mask(volume).any()
    padded, _, inside = padded_phantom(-2000)
    np.testing.assert_array_equal(padding_mask(padded), ~inside)
