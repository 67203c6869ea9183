"""Inference averaged over turned and mirrored views of each slice (config `views`, issue 25)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.config import VIEW_COUNTS, AdaptConfig
from SelfSupCTDenoiseLib.engine.inference import VIEWS, apply_slicewise, from_view, to_view
from SelfSupCTDenoiseLib.engine.run import denoise_array
from SelfSupCTDenoiseLib.errors import InputError


def lopsided_network():
    """A convolution that is neither symmetric nor turn-invariant: each view gives another output."""
    net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) / 10)
    return net


def test_the_eight_views_are_the_eight_turns_and_mirrors_and_each_is_undone():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)  # not square: turns swap the sides
    seen = {tuple(to_view(x, view).flatten().tolist()) + tuple(to_view(x, view).shape) for view in VIEWS}
    assert len(seen) == 8
    for view in VIEWS:
        assert torch.equal(from_view(to_view(x, view), view), x)


def test_views_average_the_networks_output_on_each_view_turned_back():
    slices = np.random.default_rng(0).normal(size=(3, 20, 28)).astype(np.float32)
    net = lopsided_network()
    with torch.no_grad():
        by_hand = [np.rot90(net(torch.from_numpy(np.rot90(slices, turns, axes=(1, 2)).copy())[:, None])[:, 0].numpy(),
                            -turns, axes=(1, 2)) for turns in range(4)]
    one = apply_slicewise(net, slices)
    np.testing.assert_allclose(one, by_hand[0], atol=1e-5)
    np.testing.assert_allclose(apply_slicewise(net, slices, views=2), (by_hand[0] + by_hand[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(apply_slicewise(net, slices, views=4), np.mean(by_hand, axis=0), atol=1e-5)
    assert np.abs(apply_slicewise(net, slices, views=8) - one).max() > 0.01


def test_a_network_that_sees_every_view_alike_gives_the_same_output_with_any_views():
    net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0, 1, 1] = 2.0  # the centre only: turns and mirrors change nothing
    slices = np.random.default_rng(1).normal(size=(2, 17, 23)).astype(np.float32)
    for views in VIEW_COUNTS:
        np.testing.assert_allclose(apply_slicewise(net, slices, views=views), 2 * slices, atol=1e-5)


def test_views_in_the_body_boxes_leave_the_rest_of_the_slice_as_it_is():
    slices = np.random.default_rng(2).normal(size=(2, 30, 40)).astype(np.float32)
    boxes = np.array([[5, 25, 3, 30], [0, 30, 10, 40]])
    out = apply_slicewise(lopsided_network(), slices, views=4, boxes=boxes)
    assert np.array_equal(out[0, :5], slices[0, :5]) and np.array_equal(out[1, :, :10], slices[1, :, :10])
    assert np.abs(out[0, 5:25, 3:30] - slices[0, 5:25, 3:30]).max() > 0.1


def test_a_view_count_that_is_not_offered_is_refused_in_one_line():
    with pytest.raises(InputError, match="views must be one of 1, 2, 4, 8"):
        AdaptConfig(views=3)
    done = subprocess.run([sys.executable, "-m", "SelfSupCTDenoiseLib", "denoise", "in.nrrd", "out.nrrd", "--views", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--views: invalid choice: 3" in done.stderr


def test_a_run_with_views_leaves_less_noise_than_one_view(tiny_bundle):
    clean = clean_phantom(4, 64, seed=2)
    volume = np.rint(clean + correlated_noise((4, 64, 64), 30.0, seed=3)).astype(np.int16)
    config = AdaptConfig(steps=2, batch_size=4, patch_size=32, period=2, guard=False, threads=1)
    assert config.views == 4  # the default
    one = denoise_array(volume, tiny_bundle, config.with_(views=1))
    four = denoise_array(volume, tiny_bundle, config)
    assert np.isfinite(four.denoised).all() and np.abs(four.denoised - one.denoised).max() > 0.1
    # the same adapted network: the mean of its views is closer to the image than one view (less noise)
    assert np.abs(four.denoised - clean).mean() < np.abs(one.denoised - clean).mean()
    assert four.info["parameters"]["views"] == 4


def test_the_runs_own_estimate_counts_every_view(tiny_bundle, monkeypatch):
    import SelfSupCTDenoiseLib.engine.eta as eta

    monkeypatch.setattr(eta, "probe", lambda model, config: eta.Probe(step_s=0.0, pixel_s=1e-3))
    volume = np.rint(clean_phantom(4, 64, seed=2) + correlated_noise((4, 64, 64), 30.0, seed=3)).astype(np.int16)
    config = AdaptConfig(steps=0, body_only=False, threads=1)
    expected = {views: denoise_array(volume, tiny_bundle, config.with_(views=views)).info["run"]["expected_s"]
                for views in (1, 4)}
    one_pass = 4 * 64 * 64 * 1e-3 * (1 + eta.OVERHEAD)  # steps 0: no guard, the 4 slices once
    assert expected[1] == pytest.approx(one_pass, abs=0.06) and expected[4] == pytest.approx(4 * one_pass, abs=0.06)
