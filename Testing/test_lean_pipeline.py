"""The fast, memory-lean run path (issue #14) gives the results of the path before it.

`data/sample_crop_before_speed_work.npz` was made by the engine as it was before that work (the
working tree of 2026-12-01, copied aside) with `data/frozen_tiny_bundle` (the conftest's tiny bundle,
saved without noise models: a fixed model, where the shipped one may be retrained):

    ldct = <sample_ldct_d25_hann.nrrd as array>[14:16, 0:64, 16:112].copy(); ldct[0, :12, :20] = -3024
    config = AdaptConfig(steps=10, period=5, batch_size=4, threads=1, strength=0.5)
    r = denoise_array(ldct, load_bundle(FROZEN_BUNDLE), config)
    np.savez_compressed(path, input=ldct, full_strength=r.full_strength,
                        guard=[removed_std_pretrained_hu, removed_std_adapted_hu])
"""

import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import ROOT
from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.bundle import load_bundle
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.engine.inference import apply_slicewise
from SelfSupCTDenoiseLib.engine.networks.redcnn import RedCNN
from SelfSupCTDenoiseLib.engine.run import GUARD_SLICES, denoise_array
from SelfSupCTDenoiseLib.files.denoise_file import denoise_file

REFERENCE = ROOT / "Testing" / "data" / "sample_crop_before_speed_work.npz"
FROZEN_BUNDLE = ROOT / "Testing" / "data" / "frozen_tiny_bundle"
FAST = dict(batch_size=8, patch_size=32, period=10, lr=3e-4)


def test_outputs_stay_within_half_a_hu_of_the_path_before_the_speed_work(tmp_path):
    reference = np.load(REFERENCE)
    ldct, before = reference["input"], reference["full_strength"]
    # the reference predates the local-level default and the views: the recipe it was made with
    config = AdaptConfig(steps=10, period=5, batch_size=4, threads=1, strength=0.5, noise_level="input", views=1)
    result = denoise_array(ldct, load_bundle(FROZEN_BUNDLE), config)
    guard = result.info["run"]["guard"]
    np.testing.assert_allclose([guard["removed_std_pretrained_hu"], guard["removed_std_adapted_hu"]],
                               reference["guard"], atol=0.01)
    assert np.abs(result.full_strength - before).max() <= 0.5
    blended = ldct - 0.5 * (ldct - before)
    assert np.abs(result.denoised - blended).max() <= 0.5
    assert np.abs(result.noise_map - (ldct - blended)).max() <= 0.5
    assert np.array_equal(result.full_strength[0, :12, :20], ldct[0, :12, :20])  # the padding, bit for bit

    # the file path: its own cast, noise map and verified writing
    source = tmp_path / "in.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(ldct), str(source))
    denoise_file(source, tmp_path / "out.nrrd", tmp_path / "noise.nrrd", FROZEN_BUNDLE, config, output_dtype="float32")
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nrrd")))
    noise = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "noise.nrrd")))
    assert np.abs(written - blended).max() <= 0.5
    assert np.abs(noise - (ldct - blended)).max() <= 0.5


@pytest.fixture(scope="module")
def phantom():
    ndct = clean_phantom(10, 64, seed=3)
    return ndct + correlated_noise(ndct.shape, 40.0, seed=5)


def test_the_guard_slices_go_through_each_model_once(tiny_bundle, phantom, monkeypatch):
    slices_seen = []
    forward = RedCNN.forward

    def counting(self, x):
        if x.shape[-1] == phantom.shape[-1]:  # whole slices (adaptation patches are smaller)
            slices_seen.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(RedCNN, "forward", counting)
    config = AdaptConfig(steps=2, **FAST)
    result = denoise_array(phantom, tiny_bundle, config)
    assert result.info["run"]["guard"]["fell_back"] is False
    # the guard runs both models on its slices; the full pass reuses the adapted model's (each view once)
    assert config.views == 4 and sum(slices_seen) == config.views * (len(phantom) + GUARD_SLICES)


def test_cpu_inference_runs_one_slice_at_a_time_in_channels_last():
    model = RedCNN(channels=4, kernel_size=3)
    batches, layouts = [], []
    model.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    model.conv2.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    out = apply_slicewise(model, np.zeros((5, 24, 24), np.float32))
    assert batches == [1] * 5 and out.shape == (5, 24, 24)
    assert layouts == [True] * 5
    # a copy runs: the caller's model (maybe being adapted) keeps its layout
    assert not model.conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_file_run_holds_at_most_two_float_volumes_of_numpy_arrays(tiny_bundle, tmp_path):
    """numpy's own allocations (tracemalloc sees them; SimpleITK's images and torch's buffers it does
    not): before this work a run held 8 float32 volumes; the RSS is measured by benchmarks/speed.py."""
    ldct = np.rint(clean_phantom(40, 128, seed=4) + correlated_noise((40, 128, 128), 40.0, seed=6)).astype(np.int16)
    source = tmp_path / "in.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(ldct), str(source))
    volume_bytes = ldct.size * 4

    def run():
        denoise_file(source, tmp_path / "out.nrrd", tmp_path / "noise.nrrd", tiny_bundle.path,
                     AdaptConfig(steps=2, adapt_slices=2, **FAST))

    run()  # once before: what it imports (torch's modules) is not the run's data
    tracemalloc.start()
    try:
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 2 * volume_bytes, peak / volume_bytes


def test_metrics_give_scikit_image_numbers_without_float64_copies_of_the_volumes():
    from skimage.metrics import peak_signal_noise_ratio

    from SelfSupCTDenoiseLib.quality.metrics import WINDOWS, compare

    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 300.0, (128, 64, 64)).astype(np.float32)
    image = (reference + rng.normal(0.0, 30.0, reference.shape)).astype(np.float32)
    tracemalloc.start()
    try:
        numbers = compare(image, reference)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    low, high = WINDOWS["full"]
    whole = peak_signal_noise_ratio(np.clip(reference, low, high).astype(np.float64),
                                    np.clip(image, low, high).astype(np.float64), data_range=high - low)
    assert numbers["psnr_full"] == pytest.approx(whole, rel=1e-12)
    assert numbers["rmse_hu"] == pytest.approx(np.sqrt(np.mean((image.astype(np.float64) - reference) ** 2)), rel=1e-12)
    assert peak < image.nbytes  # before: two float64 copies of each volume (4 volumes' worth per metric)
