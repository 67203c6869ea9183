import os

import numpy as np
import pytest
import torch

from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.engine.progress import CancelToken
from SelfSupCTDenoiseLib.engine.run import denoise_array
from SelfSupCTDenoiseLib.errors import Cancelled
from SelfSupCTDenoiseLib.quality.metrics import psnr

FAST = dict(batch_size=8, patch_size=32, period=10, lr=3e-4)


@pytest.fixture(scope="module")
def unseen_dose():
    """A phantom the bundle never saw, with noise 5/3 of the training level (a lower dose)."""
    ndct = clean_phantom(6, 64, seed=11)
    return ndct + correlated_noise(ndct.shape, 50.0, seed=99), ndct


def test_adaptation_beats_the_pretrained_model_at_an_unseen_dose(tiny_bundle, unseen_dose):
    ldct, ndct = unseen_dose
    pretrained = denoise_array(ldct, tiny_bundle, AdaptConfig(steps=0, **FAST))
    adapted = denoise_array(ldct, tiny_bundle, AdaptConfig(steps=100, **FAST))
    before, after, start = psnr(pretrained.denoised, ndct), psnr(adapted.denoised, ndct), psnr(ldct, ndct)
    assert before > start + 1.0
    assert after > before + 0.5, (start, before, after)
    assert not adapted.info["run"]["guard"]["fell_back"]
    # the removed noise is the input's noise: std close to the true 50 HU and far below at steps=0
    noise_sd = np.std(adapted.noise_map[ndct == 40.0])
    assert np.std(pretrained.noise_map[ndct == 40.0]) < noise_sd < 55.0


def test_noise_level_of_the_input_is_estimated_without_a_reference(tiny_bundle, unseen_dose):
    ldct, _ = unseen_dose
    info = denoise_array(ldct, tiny_bundle, AdaptConfig(steps=0, **FAST)).info
    # the phantom's noise falls steeply inside the top frequency band, which the band-wise texture
    # model (noise_level.py) cannot follow: -16% here; on simulated CT the error is in docs/BENCHMARK.md
    assert info["run"]["estimated_noise_std_hu"] == pytest.approx(50.0, rel=0.2)
    assert info["run"]["estimated_noise_sharpness"] <= 0.1  # the training texture, not a sharp kernel


def test_outputs_keep_shape_and_noise_map_is_what_was_removed(tiny_bundle, unseen_dose):
    ldct, _ = unseen_dose
    result = denoise_array(ldct[:, :40, :53], tiny_bundle, AdaptConfig(steps=3, strength=0.5, **FAST))
    assert result.denoised.shape == result.noise_map.shape == (6, 40, 53)
    assert result.denoised.dtype == np.float32
    np.testing.assert_allclose(result.noise_map, ldct[:, :40, :53] - result.denoised, atol=1e-3)
    np.testing.assert_allclose(result.denoised, ldct[:, :40, :53] - 0.5 * (ldct[:, :40, :53] - result.full_strength),
                               atol=1e-3)


def test_same_seed_same_output_other_seed_differs(tiny_bundle, unseen_dose):
    ldct = unseen_dose[0][:3]
    config = AdaptConfig(steps=10, guard=False, **FAST)  # one teacher update at step 10
    a = denoise_array(ldct, tiny_bundle, config).denoised
    b = denoise_array(ldct, tiny_bundle, config).denoised
    c = denoise_array(ldct, tiny_bundle, config.with_(seed=1)).denoised
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_guard_falls_back_when_the_pseudo_noise_is_far_too_weak(tiny_bundle, unseen_dose):
    # 2 HU Gaussian pseudo-noise teaches the model to remove almost nothing: the removed noise no
    # longer matches the input's estimated noise, and the guard returns the pretrained result.
    ldct, _ = unseen_dose
    config = AdaptConfig(steps=60, pseudo_noise="gaussian", gaussian_sigma_hu=2.0, **{**FAST, "lr": 1e-3})
    guarded = denoise_array(ldct, tiny_bundle, config)
    pretrained = denoise_array(ldct, tiny_bundle, config.with_(steps=0))
    assert guarded.info["run"]["guard"]["fell_back"]
    np.testing.assert_array_equal(guarded.denoised, pretrained.denoised)


def test_progress_reports_every_phase_and_cancel_stops_within_a_step(tiny_bundle, unseen_dose):
    ldct = unseen_dose[0]
    events = []
    denoise_array(ldct, tiny_bundle, AdaptConfig(steps=4, period=2, **{k: v for k, v in FAST.items() if k != "period"}),
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
        denoise_array(ldct, tiny_bundle, AdaptConfig(steps=50, **FAST), cancel_at_step_3, token)
    assert max(e.step for e in seen if e.phase == "adapt") == 3


# --- a run reflects every step; a diverging run never writes NaN ---------------------------------


def test_steps_short_of_one_period_change_the_output(tiny_bundle, unseen_dose):
    ldct = unseen_dose[0][:3]
    config = AdaptConfig(steps=5, guard=False, **{**FAST, "period": 20})
    adapted = denoise_array(ldct, tiny_bundle, config)
    pretrained = denoise_array(ldct, tiny_bundle, config.with_(steps=0))
    assert adapted.info["run"]["adaptation"]["teacher_updates"] == 1
    assert np.abs(adapted.denoised - pretrained.denoised).max() > 0.1  # HU


@pytest.mark.parametrize("guard", [[], ["--no-guard"]])
def test_a_diverging_adaptation_writes_the_pretrained_result_and_says_so(tiny_bundle, unseen_dose, tmp_path,
                                                                         guard, capsys):
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.cli import main
    from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar

    source = tmp_path / "float_input.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(unseen_dose[0][:3].astype(np.float32)), str(source))
    common = ["--bundle", str(tiny_bundle.path), "--batch-size", "8", "--patch-size", "32", "--period", "5"]
    assert main(["denoise", str(source), str(tmp_path / "diverged.nrrd"), "--steps", "10", "--lr", "1e4",
                 *guard, *common]) == 0
    assert "non-finite loss" in capsys.readouterr().err  # the progress line says what happened
    assert main(["denoise", str(source), str(tmp_path / "pretrained.nrrd"), "--steps", "0", *common]) == 0
    diverged = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "diverged.nrrd")))
    assert np.isfinite(diverged).all()
    np.testing.assert_array_equal(diverged, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pretrained.nrrd"))))
    run = read_sidecar(tmp_path / "diverged.nrrd")["run"]
    assert run["guard"]["fell_back"] and run["guard"]["reason"].startswith("adaptation diverged")
    assert run["adaptation"]["diverged_at_step"] == 2  # step 1's update (lr 1e4) blew the weights up


def test_a_non_finite_adapted_output_falls_back_even_without_the_guard(tiny_bundle, unseen_dose, monkeypatch):
    # Adaptation ends with finite losses but a model that overflows on the full volume.
    import SelfSupCTDenoiseLib.engine.adapt as adapt_module

    real_adapt = adapt_module.adapt

    def adapt_then_break(*args, **kwargs):
        model, history = real_adapt(*args, **kwargs)
        with torch.no_grad():
            model.tconv5.bias.fill_(float("inf"))
        return model, history

    monkeypatch.setattr(adapt_module, "adapt", adapt_then_break)
    ldct = unseen_dose[0][:3]
    config = AdaptConfig(steps=2, guard=False, **FAST)
    result = denoise_array(ldct, tiny_bundle, config)
    monkeypatch.undo()
    pretrained = denoise_array(ldct, tiny_bundle, config.with_(steps=0))
    np.testing.assert_array_equal(result.denoised, pretrained.denoised)
    assert result.info["run"]["guard"] == {"fell_back": True, "reason": "the adapted model's output is not finite"}


def test_a_non_finite_pretrained_output_is_an_error_not_an_output(tiny_bundle, unseen_dose, tmp_path):
    from SelfSupCTDenoiseLib.engine.bundle import load_bundle, save_bundle
    from SelfSupCTDenoiseLib.errors import BundleError

    state = tiny_bundle.build_denoiser().state_dict()
    state["tconv5.bias"] = torch.full_like(state["tconv5.bias"], float("nan"))
    manifest = tiny_bundle.manifest
    noise_models = [m.state_dict() for m in tiny_bundle.build_noise_models()]
    broken = save_bundle(tmp_path / "broken", profile=tiny_bundle.profile, normalization=tiny_bundle.normalization,
                         denoiser_state=state, noise_model_states=noise_models,
                         calibration=manifest["calibration"], noise_histogram=manifest["noise_histogram"])
    with pytest.raises(BundleError, match=r"pretrained model of bundle 'broken' gives NaN or infinite values"):
        denoise_array(unseen_dose[0][:3], load_bundle(broken.path), AdaptConfig(steps=0, **FAST))


# --- threads: same input, seed, thread count, device and torch build -> same output -------------


def test_same_seed_and_thread_count_give_the_same_output_and_the_threads_are_recorded(tiny_bundle, unseen_dose,
                                                                                       monkeypatch):
    ldct = unseen_dose[0][:3]
    before = torch.get_num_threads()
    seen = []
    config = AdaptConfig(steps=4, guard=False, threads=1, **{**FAST, "period": 2})
    a = denoise_array(ldct, tiny_bundle, config, progress=lambda e: seen.append(torch.get_num_threads()))
    b = denoise_array(ldct, tiny_bundle, config)
    assert np.array_equal(a.denoised, b.denoised)
    assert set(seen) == {1} and torch.get_num_threads() == before  # set for the run, restored after it
    assert a.info["threads"] == 1 and a.info["parameters"]["threads"] == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # 0 = every core unless the environment limits it
    every_core = denoise_array(ldct, tiny_bundle, config.with_(steps=0, threads=0)).info
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert every_core["threads"] == cores and every_core["parameters"]["threads"] == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert denoise_array(ldct, tiny_bundle, config.with_(steps=0, threads=0)).info["threads"] == 3


def test_threads_reach_the_engine_from_the_command_line_and_the_slicer_worker(tiny_bundle, unseen_dose, tmp_path,
                                                                            capsys):
    import json

    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.cli import main
    from SelfSupCTDenoiseLib.commands.worker import main as worker_main, make_request
    from SelfSupCTDenoiseLib.files.provenance_io import read_sidecar

    source = tmp_path / "in.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(unseen_dose[0][:3].astype(np.float32)), str(source))
    assert main(["denoise", str(source), str(tmp_path / "cli.nrrd"), "--steps", "0", "--threads", "1",
                 "--bundle", str(tiny_bundle.path)]) == 0
    assert read_sidecar(tmp_path / "cli.nrrd")["threads"] == 1
    request = tmp_path / "request.json"
    request.write_text(json.dumps(make_request(str(source), str(tmp_path / "worker.nrrd"),
                                               bundle_path=str(tiny_bundle.path), config={"steps": 0, "threads": 1})))
    capsys.readouterr()
    assert worker_main(["--request", str(request)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["event"] == "result" and last["info"]["threads"] == 1


@pytest.mark.parametrize("removed_adapted, removed_pretrained, estimated, falls_back", [
    # pancreas, half dose (benchmark, lite, 200 steps): the adapted model removed 0.82 of the estimate,
    # the over-smoothing pretrained model 0.92 of it (edges included); the adapted output scored 40.12 dB
    # against the pretrained 38.01: a gap of 10 % of the estimate is no failure
    (10.20, 11.50, 12.44, False),
    (12.0, 12.4, 12.44, False),
    (2.0, 11.5, 12.44, True),     # removes almost nothing: the pseudo-noise taught it nothing
    (25.0, 12.0, 12.44, True),    # removes twice the noise: it removes anatomy
    (4.0, 2.0, 12.44, False),     # both remove far too little, but the adapted model less so
    # the guard never trades for a model that removes more than the input's estimated noise: an
    # adapted model that removed too little is kept rather than replaced by an over-smoothing one
    (5.0, 18.0, 12.44, False),
    (25.0, 30.0, 12.44, False),   # removes anatomy, but the pretrained model removes still more
])
def test_the_guard_rejects_only_a_gross_mismatch_with_the_estimated_noise(removed_adapted, removed_pretrained,
                                                                          estimated, falls_back):
    from SelfSupCTDenoiseLib.engine.run import guard_rejects

    assert guard_rejects(removed_adapted, removed_pretrained, estimated) is falls_back
