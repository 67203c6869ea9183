"""The run's estimate of its own time, from a probe of this machine's speed at its start (issue #28)."""

import numpy as np
import torch

from SelfSupCTDenoiseLib.data.phantom import clean_phantom, correlated_noise
from SelfSupCTDenoiseLib.engine.config import AdaptConfig
from SelfSupCTDenoiseLib.engine.eta import OVERHEAD, Probe, denoised_pixels, probe
from SelfSupCTDenoiseLib.engine.run import denoise_array


def test_the_work_counted_is_the_boxes_and_the_guards_slices():
    boxes = np.array([[0, 10, 0, 20], [5, 15, 0, 10]])  # 200 and 100 pixels
    assert denoised_pixels((2, 40, 40), boxes, guard_slices=0) == 300
    assert denoised_pixels((2, 40, 40), boxes, guard_slices=6) == 300 + 2 * 150  # at most every slice once more
    assert denoised_pixels((3, 40, 40), None, guard_slices=1) == 4 * 1600
    assert Probe(step_s=0.5, pixel_s=1e-6).run_seconds(10, 1e6) == (5 + 1) * (1 + OVERHEAD)


def test_the_probe_times_the_runs_network(tiny_bundle):
    model = tiny_bundle.build_denoiser("cpu")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    measured = probe(model, AdaptConfig(batch_size=4, patch_size=32))
    assert 0 < measured.step_s < 5 and 0 < measured.pixel_s < 1e-4
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())  # a copy trained


def test_a_run_tells_how_long_it_will_take_before_it_starts_the_work(tiny_bundle):
    volume = np.rint(clean_phantom(4, 64, seed=2) + correlated_noise((4, 64, 64), 30.0, seed=3)).astype(np.int16)
    events = []
    result = denoise_array(volume, tiny_bundle, AdaptConfig(steps=3, batch_size=4, patch_size=32, period=3),
                           progress=events.append)
    first = next(e for e in events if e.eta_s is not None)
    assert first.phase == "noise" and "this machine's speed" in first.message
    assert abs(first.eta_s - result.info["run"]["expected_s"]) <= 0.05 and 0 < first.eta_s < 60
    # before the work it estimates: the noise estimate, the adaptation, the guard and the inference
    assert events.index(first) < min(i for i, e in enumerate(events) if e.phase in ("adapt", "infer"))


def test_the_cli_prints_the_runs_estimate(capsys):
    from SelfSupCTDenoiseLib.commands.console import TqdmProgress
    from SelfSupCTDenoiseLib.engine.progress import ProgressEvent

    TqdmProgress()(ProgressEvent("noise", eta_s=95.4, message="the time left is from this machine's speed"))
    assert "noise: the time left is from this machine's speed (about 95 s left)" in capsys.readouterr().err
