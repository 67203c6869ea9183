"""The panel's first estimate on a computer (issue #28): the worker's `--probe` times it in a child
process, the panel starts that once per profile and device in the background and estimates from its
answer until a run here measured the computer; the built-in table (another computer's) only where the
probe failed. Real worker processes, real torch, real MRML nodes (slicer-core)."""

import json
import math
import subprocess
import sys

import pytest

from test_slicer_logic import MODULE_DIR, _load_module, add_volume, ct_array, scene, settings  # noqa: F401
from SelfSupCTDenoiseSlicer.runner import WorkerRunner

MEASURING = "Estimated time: measuring this computer's speed…"


def worker(*arguments):
    return subprocess.run([sys.executable, "-m", "SelfSupCTDenoiseLib.commands.worker", *map(str, arguments)],
                          cwd=MODULE_DIR, capture_output=True, text=True, timeout=300)


def test_the_worker_probe_answers_with_this_computers_unit_costs(tiny_bundle):
    done = worker("--probe", "--bundle", tiny_bundle.path, "--device", "cpu", "--threads", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["event"] == "probe" and answer["threads"] == 1 and answer["device"] == "cpu (1 threads)"
    assert set(answer["costs"]) == {"stepS", "sliceS", "startupS"}
    assert all(math.isfinite(v) and v > 0 for v in answer["costs"].values()), answer
    assert answer["costs"]["startupS"] > 0.2  # the interpreter's, torch's and the bundle's start: not nothing
    # errors come as a run's do; a probe is not a request
    failed = worker("--probe", "--bundle", tiny_bundle.path.parent / "missing")
    assert failed.returncode == 1
    assert json.loads(failed.stdout.strip().splitlines()[-1])["kind"] == "bundle"
    assert worker("--probe", "--request", "r.json").returncode == 2


def _panel(monkeypatch, tmp_path, scene, models=None):
    """The module's Logic with the real worker and a parameter node on a 16-slice 512x512 volume."""
    module, logic, store, fakeModels = _load_module(monkeypatch, tmp_path)
    if models is not None:
        monkeypatch.setattr(settings, "modelsDir", lambda: models)
    monkeypatch.setattr(logic, "createRunner", lambda: WorkerRunner(tempRoot=str(tmp_path)))
    params = module.SelfSupCTDenoiseParameterNode()
    params.inputVolume = add_volume(scene, ct_array((16, 512, 512)), name="CT")
    params.threads = 1
    return module, logic, store, params


def test_the_panel_estimates_from_a_probe_of_this_computer_before_its_first_run(scene, monkeypatch, tmp_path,
                                                                                tiny_bundle):
    module, logic, store, params = _panel(monkeypatch, tmp_path, scene, models=tiny_bundle.path.parent)
    table = settings.estimateTime((16, 512, 512), logic.configFromParameters(params), "tiny", False)
    assert logic.estimateText(params) == MEASURING  # at once: the probe runs in the background
    probe = logic.probes[("tiny", "cpu")]
    assert probe.running and logic.probing
    assert logic.estimateText(params) == MEASURING and list(logic.probes.values()) == [probe]  # started once
    assert probe.wait(240), "the probe did not answer"
    assert probe.costs is not None, probe.message
    text = logic.estimateText(params)
    assert text.endswith("(probed on this computer)") and table.describe() not in text
    share = settings.bodyShare(ct_array((16, 512, 512)), settings.readManifest(tiny_bundle.path))
    assert share < 0.85  # the run denoises the body's boxes; so does the estimate
    probed = settings.estimateTime((16, 512, 512), logic.configFromParameters(params), "tiny", False,
                                   costs=logic.probedCosts("tiny", False), bodyShare=share)
    assert text == f"Estimated time: {probed.describe()}" and not logic.probing
    params.steps = 20  # other settings: the same probe's costs, no second probe
    assert "probed on this computer" in logic.estimateText(params) and list(logic.probes.values()) == [probe]
    # a run's own measurement, once there is one, is preferred; what it did not time (no steps) is the probe's
    job = logic.process(params.inputVolume, config={"steps": 0, "threads": 1}, timeout=240)
    assert job.state.value == "completed", job.message
    assert logic.estimateText(params).endswith("(measured on this computer)")
    stored = json.loads(store[module.SelfSupCTDenoiseLogic.SETTINGS_KEY])["tiny/cpu"]
    assert stored["stepS"] == probe.costs["stepS"] and stored["sliceS"] != probe.costs["sliceS"]


def test_a_failed_probe_falls_back_to_the_table_and_says_it_is_another_computers(scene, monkeypatch, tmp_path):
    module, logic, store, params = _panel(monkeypatch, tmp_path, scene)  # a 'lite' bundle of a manifest only
    assert logic.estimateText(params) == MEASURING
    probe = logic.probes[("lite", "cpu")]
    assert probe.wait(240) and probe.costs is None and probe.message
    table = settings.estimateTime((16, 512, 512), logic.configFromParameters(params), "lite", False)
    assert logic.estimateText(params) == f"Estimated time: {table.describe()}"
    assert "measured on another 2-core CPU; this one may differ several-fold until a first run here" in table.basis
    assert list(logic.probes) == [("lite", "cpu")]  # not tried again in this session
