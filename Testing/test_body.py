"""Only the body is denoised (issue #28): its box per slice, widened by the network's receptive
radius, gives the body the whole slice's output; outside the box the input stays as it is."""

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import ROOT
from SelfSupCTDenoiseLib.commands.options import add_adapt_arguments, config_from_args
from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.body import BLOCK, body_box, body_boxes
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.engine.inference import apply_slicewise
from SelfSupCTDenoiseLib.engine.networks.redcnn import RedCNN
from SelfSupCTDenoiseLib.engine.run import denoise_array

SAMPLE = ROOT / "SelfSupCTDenoise" / "Resources" / "Sample" / "sample_ldct_d25_hann.nrrd"


def patient_on_a_table(slices=3, size=160, seed=0, noise=40.0):
    """(slices, size, size) int16 HU: a 64 px phantom body and an arm beside it (the air between them
    8 px or more) in noisy air, with a table under them: a 4 px shell of 200 HU across the slice."""
    volume = np.full((slices, size, size), -1000.0, np.float32)
    volume[:, 40:104, 30:94] = clean_phantom(slices, 64, seed=seed)
    volume[:, 60:90, 102:120] = 30.0  # the arm
    volume[:, 120:124, :] = 200.0  # the table's shell
    return np.rint(volume + correlated_noise(volume.shape, noise, seed=seed + 1)).astype(np.int16)


def test_the_box_holds_the_body_and_the_arm_and_leaves_out_the_table_and_the_air():
    ys, xs = np.nonzero(patient_on_a_table(noise=0)[0, :120] > -500)  # the body and the arm
    y0, y1, x0, x1 = body_box(patient_on_a_table()[0], margin=10)
    # their pixels and 10 px of margin, widened by less than two blocks (of 4 px) of the mask
    for before, after in ((ys.min() - y0, y1 - ys.max() - 1), (xs.min() - x0, x1 - xs.max() - 1)):
        assert 10 <= before < 10 + 2 * BLOCK and 10 <= after < 10 + 2 * BLOCK
    assert y1 < 120  # not the table


def test_the_box_of_real_chest_ct_in_air_holds_all_of_it():
    sample = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE)))[::8]
    canvas = np.full((len(sample), 320, 320), -1000, np.int16)
    canvas[:, 60:60 + sample.shape[1], 40:40 + sample.shape[2]] = sample
    canvas[:, 300:304, :] = 100  # a table under it
    boxes = body_boxes(canvas, margin=20)
    dense = canvas > -500
    for z, (y0, y1, x0, x1) in enumerate(boxes):
        inside = np.zeros(dense.shape[1:], bool)
        inside[y0 + 20:y1 - 20, x0 + 20:x1 - 20] = True
        assert dense[z, :300][~inside[:300]].sum() == 0  # every dense pixel but the table's
        assert y1 < 300


def test_a_slice_without_a_body_is_run_whole():
    air = np.rint(-1000 + 30 * np.random.default_rng(0).standard_normal((48, 64))).astype(np.int16)
    assert body_box(air, margin=20) == (0, 48, 0, 64)


def random_redcnn(kernel_size=5):
    torch.manual_seed(0)
    return RedCNN(channels=4, kernel_size=kernel_size, identity_init=False).eval()


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_the_body_gets_the_whole_slice_output_and_the_rest_stays_the_input(kernel_size):
    volume = patient_on_a_table(slices=2)
    model = random_redcnn(kernel_size)
    to_input = lambda hu: hu / 1000.0  # noqa: E731
    from_output = lambda y: y * 1000.0  # noqa: E731
    whole = apply_slicewise(model, volume, to_input=to_input, from_output=from_output)
    radius = model.receptive_radius
    for margin, close in ((radius, True), (radius - 1, False)):
        boxes = body_boxes(volume, margin)
        cropped = apply_slicewise(model, volume, to_input=to_input, from_output=from_output, boxes=boxes)
        for z, (y0, y1, x0, x1) in enumerate(boxes):
            body = (z, slice(y0 + margin, y1 - margin), slice(x0 + margin, x1 - margin))
            worst = np.abs(cropped[body] - whole[body]).max()
            assert worst <= 1e-3 if close else worst > 1e-2, (margin, worst)
            outside = np.ones(volume.shape[1:], bool)
            outside[y0:y1, x0:x1] = False
            np.testing.assert_array_equal(cropped[z][outside], volume[z][outside].astype(np.float32))


def test_a_run_denoises_the_body_as_on_whole_slices_and_leaves_air_and_padding_as_they_are(tiny_bundle):
    volume = patient_on_a_table(slices=4, seed=3)
    volume[1, :10, :30] = -3024  # scanner padding
    config = AdaptConfig(steps=4, batch_size=8, patch_size=32, period=2, device="cpu", threads=1)
    body = denoise_array(volume, tiny_bundle, config)
    whole = denoise_array(volume, tiny_bundle, AdaptConfig(**{**config.to_dict(), "body_only": False}))
    assert 0.3 < body.info["run"]["body_fraction"] < 0.6
    assert "body_fraction" not in whole.info["run"]
    radius = RedCNN(**tiny_bundle.profile.denoiser_kwargs()).receptive_radius
    for z, (y0, y1, x0, x1) in enumerate(body_boxes(volume, radius)):
        inner = (z, slice(y0 + radius, y1 - radius), slice(x0 + radius, x1 - radius))  # the body and its edge
        assert np.abs(body.denoised[inner] - whole.denoised[inner]).max() <= 0.5
        outside = np.ones(volume.shape[1:], bool)
        outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(body.denoised[z][outside], volume[z][outside].astype(np.float32))
    np.testing.assert_array_equal(body.denoised[1, :10, :30], -3024.0)
    assert np.abs(whole.denoised[0, 130:] - volume[0, 130:]).mean() > 5  # whole slices denoise the air too


def test_the_cli_runs_whole_slices_on_request():
    import argparse

    parser = argparse.ArgumentParser()
    add_adapt_arguments(parser)
    assert config_from_args(parser.parse_args([])).body_only is True
    assert config_from_args(parser.parse_args(["--whole-slices"])).body_only is False


#: In a fresh interpreter: the shipped network on 16 slices whose boxes all differ in size, as a real
#: volume's do; prints how much the process's resident memory grew (MB).
VARYING_BOXES = """
import numpy as np, torch
import SelfSupCTDenoiseLib
from SelfSupCTDenoiseLib.engine.inference import apply_slicewise
from SelfSupCTDenoiseLib.engine.bundle import load_bundle
torch.set_num_threads(2)
net = load_bundle().build_denoiser()
rng = np.random.default_rng(0)
volume = rng.normal(0, 0.1, (16, 400, 400)).astype(np.float32)
boxes = np.array([[0, h, 0, w] for h, w in rng.integers(250, 400, (16, 2))])
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
apply_slicewise(net, volume[:1])  # the allocator's and oneDNN's first use, not counted
before = resident()
apply_slicewise(net, volume, boxes=boxes)
print((resident() - before) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_boxes_of_many_sizes_give_their_memory_back():
    """Each new box size used to leave ~10 MB of freed buffers resident in glibc's heap: a 300-slice
    chest run peaked 4.6 float32 volumes above the 16-slice run's (engine/heap.py)."""
    done = subprocess.run([sys.executable, "-c", VARYING_BOXES], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "SelfSupCTDenoise")})
    grew_mb = float(done.stdout.split()[-1])
    assert grew_mb < 40, grew_mb
