import numpy as np
import pytest

from SelfSupCTDenoiseLib.config import AdaptConfig
from SelfSupCTDenoiseLib.errors import Cancelled
from SelfSupCTDenoiseLib.metrics import psnr
from SelfSupCTDenoiseLib.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.pipeline import denoise_array
from SelfSupCTDenoiseLib.progress import CancelToken

FAST = dict(batch_size=8, patch_size=32, period=10, lr=3e-4)


@pytest.fixture(scope="module")
def unseen_dose():
    """A phantom the bundle never saw, with noise 5/3 of the training level (a lower dose)."""
    ndct = clean_phantom(6, 64, seed=11)
    return ndct + correlated_noise(ndct.shape, 50.0, seed=99), ndct


def test_adaptation_beats_the_pretrained_model_at_an_unseen_dose(tiny_bundle, unseen_dose):
    ldct, ndct = unseen_dose
    pretrained = denoise_array(ldct, (1, 1, 1), tiny_bundle, AdaptConfig(steps=0, **FAST))
    adapted = denoise_array(ldct, (1, 1, 1), tiny_bundle, AdaptConfig(steps=100, **FAST))
    before, after, start = psnr(pretrained.denoised, ndct), psnr(adapted.denoised, ndct), psnr(ldct, ndct)
    assert before > start + 1.0
    assert after > before + 0.5, (start, before, after)
    assert not adapted.info["run"]["guard"]["fell_back"]
    # the removed noise is the input's noise: std close to the true 50 HU and far below at steps=0
    noise_sd = np.std(adapted.noise_map[ndct == 40.0])
    assert np.std(pretrained.noise_map[ndct == 40.0]) < noise_sd < 55.0


def test_noise_level_of_the_input_is_estimated_without_a_reference(tiny_bundle, unseen_dose):
    ldct, _ = unseen_dose
    info = denoise_array(ldct, (1, 1, 1), tiny_bundle, AdaptConfig(steps=0, **FAST)).info
    # the phantom's noise falls steeply inside the top frequency band, which the band-wise texture
    # model (noise_level.py) cannot follow: -16% here; on simulated CT the error is in docs/BENCHMARK.md
    assert info["run"]["estimated_noise_std_hu"] == pytest.approx(50.0, rel=0.2)
    assert info["run"]["estimated_noise_sharpness"] <= 0.1  # the training texture, not a sharp kernel


def test_outputs_keep_shape_and_noise_map_is_what_was_removed(tiny_bundle, unseen_dose):
    ldct, _ = unseen_dose
    result = denoise_array(ldct[:, :40, :53], (1, 1, 1), tiny_bundle, AdaptConfig(steps=3, strength=0.5, **FAST))
    assert result.denoised.shape == result.noise_map.shape == (6, 40, 53)
    assert result.denoised.dtype == np.float32
    np.testing.assert_allclose(result.noise_map, ldct[:, :40, :53] - result.denoised, atol=1e-3)
    np.testing.assert_allclose(result.denoised, ldct[:, :40, :53] - 0.5 * (ldct[:, :40, :53] - result.full_strength),
                               atol=1e-3)


def test_same_seed_same_output_other_seed_differs(tiny_bundle, unseen_dose):
    ldct = unseen_dose[0][:3]
    config = AdaptConfig(steps=10, guard=False, **FAST)  # one teacher update at step 10
    a = denoise_array(ldct, (1, 1, 1), tiny_bundle, config).denoised
    b = denoise_array(ldct, (1, 1, 1), tiny_bundle, config).denoised
    c = denoise_array(ldct, (1, 1, 1), tiny_bundle, config.with_(seed=1)).denoised
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_guard_falls_back_when_the_pseudo_noise_is_far_too_weak(tiny_bundle, unseen_dose):
    # 2 HU Gaussian pseudo-noise teaches the model to remove almost nothing: the removed noise no
    # longer matches the input's estimated noise, and the guard returns the pretrained result.
    ldct, _ = unseen_dose
    config = AdaptConfig(steps=60, pseudo_noise="gaussian", gaussian_sigma_hu=2.0, **{**FAST, "lr": 1e-3})
    guarded = denoise_array(ldct, (1, 1, 1), tiny_bundle, config)
    pretrained = denoise_array(ldct, (1, 1, 1), tiny_bundle, config.with_(steps=0))
    assert guarded.info["run"]["guard"]["fell_back"]
    np.testing.assert_array_equal(guarded.denoised, pretrained.denoised)


def test_progress_reports_every_phase_and_cancel_stops_within_a_step(tiny_bundle, unseen_dose):
    ldct = unseen_dose[0]
    events = []
    denoise_array(ldct, (1, 1, 1), tiny_bundle, AdaptConfig(steps=4, period=2, **{k: v for k, v in FAST.items() if k != "period"}),
                  progress=events.append)
    phases = [e.phase for e in events]
    assert {"noise", "adapt", "infer"} <= set(phases)
    adapt_steps = [e for e in events if e.phase == "adapt" and e.step > 0]
    assert [e.step for e in adapt_steps] == [1, 2, 3, 4] and all(e.loss is not None for e in adapt_steps)
    assert adapt_steps[-1].eta_s == 0

    token, seen = CancelToken(), []

    def cancel_at_step_3(event):
        seen.append(event)
        if event.phase == "adapt" and event.step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        denoise_array(ldct, (1, 1, 1), tiny_bundle, AdaptConfig(steps=50, **FAST), cancel_at_step_3, token)
    assert max(e.step for e in seen if e.phase == "adapt") == 3
