"""The module's node-level logic on real MRML scenes and volume nodes (the `slicer-core` wheel), without
the Slicer application: input checks, output nodes and names, exact geometry (oblique, flipped),
subject hierarchy, provenance, cancel and failure leaving the scene unchanged, and the consistency of
parameter node, panel (.ui), engine config and CMake file lists."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SelfSupCTDenoise"
sys.path.insert(0, str(MODULE_DIR))

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from SelfSupCTDenoiseLib.engine.progress import ProgressEvent  # noqa: E402
from SelfSupCTDenoiseLib.errors import InputError  # noqa: E402
from SelfSupCTDenoiseSlicer import nodes, settings  # noqa: E402
from SelfSupCTDenoiseSlicer.job import DenoiseJob  # noqa: E402
from SelfSupCTDenoiseSlicer.runner import RunState, WorkerRunner  # noqa: E402
from SelfSupCTDenoiseSlicer.status import ProgressTracker  # noqa: E402

from test_runner import FAKE_WORKER, assert_hidden_console, pretend_windows  # noqa: E402


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene  # slicer.util's array helpers use the global scene
    yield scene
    scene.Clear(1)


@pytest.fixture
def fake_worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("fake") / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return path


def ct_array(shape=(4, 24, 20), seed=0):
    """Synthetic CT in HU: air around a soft-tissue body with a bright insert, plus noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    body = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (0.4 * min(shape[1:])) ** 2
    array = np.where(body, 40.0, -1000.0) + 300.0 * ((x < 6) & body) + rng.normal(0, 20, shape)
    return np.round(array).astype(np.int16)


def oblique_matrix(flip=False):
    """IJK->RAS with rotated axes, unequal spacing, an offset origin; `flip` makes it left-handed."""
    angle = np.deg2rad(23.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.deg2rad(11.0)
    rotation = rotation @ np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    spacing = np.diag([0.71, 0.83, 2.5])
    if flip:
        spacing = spacing @ np.diag([-1.0, 1.0, -1.0]) @ np.diag([1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ spacing
    matrix[:3, 3] = [-12.5, 30.25, 101.0]
    return matrix


def add_volume(scene, array, matrix=None, name="LDCT", className="vtkMRMLScalarVolumeNode"):
    return slicer.util.addVolumeFromArray(array, ijkToRAS=matrix, name=name, nodeClassName=className)


def make_job(fake_worker, tmp_path, input_node, mode="ok", config=None, **kwargs):
    env = dict(os.environ, FAKE_MODE=mode)
    runner = WorkerRunner(command=[sys.executable, str(fake_worker)], environment=env, tempRoot=str(tmp_path))
    return DenoiseJob(input_node, config or {"steps": 3}, runner=runner, **kwargs)


def ijk_to_ras(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


# -- input checks -----------------------------------------------------------------------------

def test_output_names_follow_the_input():
    assert nodes.outputNames("CT chest") == ("CT chest denoised", "CT chest noise map")


def test_a_ct_volume_passes_validation(scene):
    nodes.validateInputVolume(add_volume(scene, ct_array()))


@pytest.mark.parametrize("case, expected", [
    ("none", "Select an input"),
    ("labelmap", "label map"),
    ("vector", "vector or colour"),
    ("single_slice", "2D image"),
    ("thin", "2D image"),
    ("nan", "NaN"),
    ("not_ct", "Hounsfield"),
    ("segmentation_values", "label map"),
])
def test_bad_inputs_give_clear_errors(scene, case, expected):
    if case == "none":
        node = None
    elif case == "labelmap":
        node = add_volume(scene, (ct_array() > 0).astype(np.int16), className="vtkMRMLLabelMapVolumeNode")
    elif case == "vector":
        node = add_volume(scene, np.zeros((4, 24, 20, 3), np.uint8), className="vtkMRMLVectorVolumeNode")
    elif case == "single_slice":
        node = add_volume(scene, ct_array((1, 24, 20)))
    elif case == "thin":
        node = add_volume(scene, ct_array((4, 24, 8)))
    elif case == "nan":
        array = ct_array().astype(np.float32)
        array[1, 2, 3] = np.nan
        node = add_volume(scene, array)
    elif case == "not_ct":
        node = add_volume(scene, np.random.default_rng(0).uniform(0, 1, (4, 24, 20)).astype(np.float32))
    else:
        node = add_volume(scene, np.random.default_rng(0).integers(0, 5, (4, 24, 20)).astype(np.int16))
    with pytest.raises(nodes.InputVolumeError, match=expected) as info:
        nodes.validateInputVolume(node)
    assert "Traceback" not in str(info.value)


# -- runs with a fake worker --------------------------------------------------------------------

@pytest.mark.parametrize("flip", [False, True], ids=["oblique", "oblique-flipped"])
def test_outputs_copy_the_input_geometry_exactly(scene, fake_worker, tmp_path, flip):
    array = ct_array()
    matrix = oblique_matrix(flip)
    assert (np.linalg.det(matrix[:3, :3]) < 0) == flip
    input_node = add_volume(scene, array, matrix)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient table")
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    job = make_job(fake_worker, tmp_path, input_node)
    job.start()
    assert job.waitForCompletion(30) is RunState.COMPLETED, job.message
    for output in (job.outputVolume, job.noiseMapVolume):
        assert np.array_equal(ijk_to_ras(output), ijk_to_ras(input_node))  # exact, not approximately
        assert output.GetTransformNodeID() == transform.GetID()
        assert output.GetImageData().GetDimensions() == input_node.GetImageData().GetDimensions()
    # The fake worker returns input - 10: any axis swap or flip would break the equality.
    assert np.array_equal(slicer.util.arrayFromVolume(job.outputVolume), array - 10)
    assert slicer.util.arrayFromVolume(job.outputVolume).dtype == array.dtype
    assert np.all(slicer.util.arrayFromVolume(job.noiseMapVolume) == 10)
    assert np.array_equal(slicer.util.arrayFromVolume(input_node), array)  # input untouched


def test_new_output_nodes_are_named_placed_and_annotated(scene, fake_worker, tmp_path):
    input_node = add_volume(scene, ct_array(), name="Chest LDCT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1"), "Study 1")
    sh.CreateItem(study, input_node)
    job = make_job(fake_worker, tmp_path, input_node, config={"steps": 3, "seed": 7})
    job.start()
    assert job.waitForCompletion(30) is RunState.COMPLETED
    assert job.outputVolume.GetName() == "Chest LDCT denoised"
    assert job.noiseMapVolume.GetName() == "Chest LDCT noise map"
    for node, role in ((job.outputVolume, "denoised"), (job.noiseMapVolume, "noise map")):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
        assert node.GetAttribute("SelfSupCTDenoise_role") == role
        assert node.GetAttribute("SelfSupCTDenoise_input_node_id") == input_node.GetID()
        assert node.GetAttribute("SelfSupCTDenoise_parameters.seed") == "7"  # the engine's NRRD field names
        provenance = nodes.readProvenance(node)
        # the worker runs at strength 1; the node records the strength of its own voxels
        assert provenance["parameters"] == {"steps": 3, "seed": 7, "strength": 1.0}
        assert provenance["bundle"]["name"] == "fake"
        assert "not for diagnosis" in node.GetDescription()
    noise_display = job.noiseMapVolume.GetDisplayNode()
    assert noise_display.GetLevel() == 0.0 and noise_display.GetWindow() == pytest.approx(2 * job.noiseHalfWindow)
    assert not job.runner.workDir.exists()


def test_second_run_gets_unique_names_and_an_existing_output_is_reused(scene, fake_worker, tmp_path):
    input_node = add_volume(scene, ct_array(), name="CT")
    first = make_job(fake_worker, tmp_path, input_node, createNoiseMap=False)
    first.start()
    first.waitForCompletion(30)
    assert first.noiseMapVolume is None and first.outputVolume.GetName() == "CT denoised"
    second = make_job(fake_worker, tmp_path, input_node, createNoiseMap=False)
    second.start()
    second.waitForCompletion(30)
    assert second.outputVolume.GetName() != "CT denoised"
    count = scene.GetNumberOfNodes()
    third = make_job(fake_worker, tmp_path, input_node, outputVolume=first.outputVolume, createNoiseMap=False)
    third.start()
    third.waitForCompletion(30)
    assert third.outputVolume is first.outputVolume and scene.GetNumberOfNodes() == count


def test_output_equal_to_input_is_refused(scene, fake_worker, tmp_path):
    input_node = add_volume(scene, ct_array())
    job = make_job(fake_worker, tmp_path, input_node, outputVolume=input_node)
    with pytest.raises(nodes.InputVolumeError, match="never overwritten"):
        job.start()


@pytest.mark.parametrize("mode", ["slow", "error", "crash"])
def test_cancel_or_failure_leaves_the_scene_unchanged(scene, fake_worker, tmp_path, mode):
    input_node = add_volume(scene, ct_array(), name="CT")
    existing_output = add_volume(scene, np.zeros((4, 24, 20), np.int16), name="previous result")
    before_nodes = nodes.sceneSnapshot(scene)
    before_input = slicer.util.arrayFromVolume(input_node).copy()
    finished = []
    job = make_job(fake_worker, tmp_path, input_node, mode, outputVolume=existing_output,
                   onFinished=finished.append)
    job.start()
    if mode == "slow":
        deadline = time.monotonic() + 20
        while job.tracker.lastEvent is None and time.monotonic() < deadline:
            job.poll()
            time.sleep(0.01)
        start = time.monotonic()
        assert job.cancel()
        assert job.state is RunState.CANCELLED and time.monotonic() - start < 0.2
        job.runner.waitForCompletion(5)
        assert time.monotonic() - start < 2.0
        assert job.poll() is False
    else:
        assert job.waitForCompletion(30) is RunState.FAILED
        assert job.message and "Traceback" not in job.message
    assert finished == [job]
    assert nodes.sceneSnapshot(scene) == before_nodes
    assert np.array_equal(slicer.util.arrayFromVolume(input_node), before_input)
    assert not np.any(slicer.util.arrayFromVolume(existing_output))
    assert job.outputVolume is None and job.noiseMapVolume is None
    assert not job.runner.workDir.exists()


def test_real_engine_from_node_to_nodes_keeps_geometry_and_hu(scene, tmp_path, tiny_bundle):
    from SelfSupCTDenoiseLib.data.phantom import noisy_pair

    ldct, _ = noisy_pair(4, 48, 30.0, seed=5)
    array = np.round(ldct).astype(np.int16)
    input_node = add_volume(scene, array, oblique_matrix(flip=True), name="phantom")
    runner = WorkerRunner(pythonPath=[str(MODULE_DIR)], tempRoot=str(tmp_path))
    config = settings.buildConfig(steps=4, period=2, learningRate=1e-4, batchSize=4, seed=0, device="cpu",
                                  strength=1.0, patch_size=32)
    job = DenoiseJob(input_node, config, bundlePath=str(tiny_bundle.path), runner=runner, forceCpu=True)
    job.start()
    assert job.waitForCompletion(180) is RunState.COMPLETED, job.message
    denoised = slicer.util.arrayFromVolume(job.outputVolume)
    noise = slicer.util.arrayFromVolume(job.noiseMapVolume)
    assert np.array_equal(ijk_to_ras(job.outputVolume), ijk_to_ras(input_node))
    assert denoised.shape == array.shape and denoised.dtype == array.dtype
    assert np.allclose(array.astype(np.float32) - denoised, noise, atol=1.0)  # noise map = input - output
    assert abs(float(denoised.mean()) - float(array.mean())) < 10.0
    assert np.array_equal(slicer.util.arrayFromVolume(input_node), array)
    assert nodes.readProvenance(job.outputVolume)["bundle"]["sha256"] == tiny_bundle.sha256


def test_the_panel_turns_the_ct_check_off_and_the_result_records_it(scene, tmp_path, tiny_bundle):
    rng = np.random.default_rng(4)
    array = (np.where(ct_array((4, 32, 32)) > -500, 600.0, 0.0) + rng.normal(0, 5, (4, 32, 32)) ** 2).astype(np.float32)
    input_node = add_volume(scene, array, name="MR")  # non-negative, like magnitude MR: not CT in HU
    with pytest.raises(nodes.InputVolumeError, match="Hounsfield"):
        nodes.validateInputVolume(input_node)
    values = dict(steps=0, period=1, learningRate=1e-4, batchSize=4, seed=0, device="cpu", strength=1.0)
    assert settings.buildConfig(**values)["ct_check"] is True
    config = settings.buildConfig(**values, ctCheck=False)  # the parameter node's name
    assert config["ct_check"] is False
    job = DenoiseJob(input_node, config, bundlePath=str(tiny_bundle.path),
                     runner=WorkerRunner(pythonPath=[str(MODULE_DIR)], tempRoot=str(tmp_path)), forceCpu=True)
    job.start()
    assert job.waitForCompletion(180) is RunState.COMPLETED, job.message
    provenance = nodes.readProvenance(job.outputVolume)
    assert provenance["parameters"]["ct_check"] is False
    assert "does not look like CT" in provenance["run"]["ct_check"]["overridden"]


def test_input_removed_during_the_run_creates_nothing(scene, fake_worker, tmp_path):
    input_node = add_volume(scene, ct_array())
    job = make_job(fake_worker, tmp_path, input_node)
    job.start()
    scene.RemoveNode(input_node)
    before = nodes.sceneSnapshot(scene)
    assert job.waitForCompletion(30) is RunState.FAILED and "removed" in job.message
    assert nodes.sceneSnapshot(scene) == before


def test_progress_callback_sees_monotonic_percentages(scene, fake_worker, tmp_path):
    seen = []
    input_node = add_volume(scene, ct_array())
    job = make_job(fake_worker, tmp_path, input_node, onProgress=lambda t: seen.append(t.percent))
    job.start()
    job.waitForCompletion(30)
    assert seen == sorted(seen) and seen[-1] == 99 and len(seen) >= 2


# -- settings, estimates, progress ----------------------------------------------------------------

def test_build_config_validates_through_the_engine():
    config = settings.buildConfig(steps=100, period=10, learningRate=1e-4, batchSize=8, seed=3, device="cpu",
                                  strength=0.75, pretrainedOnly=True)
    assert config["steps"] == 0 and config["strength"] == 0.75 and config["device"] == "cpu"
    with pytest.raises(InputError, match="period"):
        settings.buildConfig(steps=10, period=0, learningRate=1e-4, batchSize=8, seed=0, device="auto", strength=1)


def test_bundle_resolution_prefers_the_full_model_on_cuda(tmp_path):
    for name in ("lite", "paper"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "not-a-bundle").mkdir()
    assert settings.bundleChoices(tmp_path) == ["auto", "lite", "paper"]
    assert settings.resolveBundle("auto", True, folder=tmp_path).name == "lite"
    assert settings.resolveBundle("auto", False, folder=tmp_path).name == "lite"
    assert settings.resolveBundle("paper", False, folder=tmp_path).name == "paper"
    assert settings.resolveBundle("auto", False, customPath=str(tmp_path / "paper"), folder=tmp_path).name == "paper"
    with pytest.raises(ValueError, match="not a model bundle"):
        settings.resolveBundle("auto", False, customPath=str(tmp_path / "not-a-bundle"), folder=tmp_path)
    with pytest.raises(ValueError, match="not found"):
        settings.resolveBundle("huge", False, folder=tmp_path)


def test_device_description_without_gpu():
    assert "No CUDA GPU" in settings.describeDevice("auto", [])
    assert "CUDA requested" in settings.describeDevice("cuda", [])
    gpu = settings.GpuInfo("NVIDIA Test", 8192)
    assert "NVIDIA Test, 8 GB" in settings.describeDevice("auto", [gpu])
    assert settings.willUseCuda("auto", [gpu]) and not settings.willUseCuda("cpu", [gpu])


def test_time_estimate_grows_with_work_and_uses_local_measurements():
    config = {"steps": 200, "batch_size": 16, "patch_size": 64}
    small = settings.estimateTime((40, 512, 512), config, "lite", False)
    large = settings.estimateTime((200, 512, 512), config, "lite", False)
    quick = settings.estimateTime((40, 512, 512), dict(config, steps=0), "lite", False)
    assert quick.seconds < small.seconds < large.seconds
    assert "2-core" in small.basis
    local = settings.estimateTime((40, 512, 512), config, "lite", False,
                                  costs={"stepS": 0.1, "sliceS": 0.2, "noiseSliceS": 0.05, "startupS": 1.0})
    assert local.basis == "measured on this computer" and local.seconds < small.seconds
    assert settings.formatDuration(59) == "59 s" and settings.formatDuration(125) == "2 min 05 s"


def test_the_estimate_counts_the_body_boxes_a_run_denoises_not_whole_slices():
    """A run denoises each slice's body box only (issue #28): an estimate of whole slices was 1.3x a
    300-slice chest run's inference on the slow 2-core machine; a run's measured slice cost is a
    whole slice's, whatever share of it that volume's body took."""
    from SelfSupCTDenoiseLib.engine.body import body_boxes, box_fraction

    volume = ct_array((40, 512, 512))  # a disc of body in air
    share = settings.bodyShare(volume, {"profile": {"redcnn_kernel": 5}})
    assert share == pytest.approx(box_fraction(body_boxes(volume, 20), volume.shape), abs=0.01) and share < 0.85
    for profile in ({}, {"redcnn_kernel": "x"}, {"redcnn_kernel": -3}):  # reach unknown: whole slices, no error
        assert settings.bodyShare(volume, {"profile": profile}) == 1.0
    costs = {"stepS": 0.1, "sliceS": 0.2, "noiseSliceS": 0.05, "startupS": 1.0}
    config = {"steps": 0, "views": 1}
    whole = settings.estimateTime((40, 512, 512), config, "lite", False, costs=costs).seconds
    body = settings.estimateTime((40, 512, 512), config, "lite", False, costs=costs, bodyShare=share).seconds
    assert body - 1.0 == pytest.approx((whole - 1.0) * share)
    asked = settings.estimateTime((40, 512, 512), dict(config, body_only=False), "lite", False, costs=costs,
                                  bodyShare=share)
    assert asked.seconds == whole  # whole slices on request
    now = [0.0]
    tracker = ProgressTracker(numSlices=40, steps=0, clock=lambda: now[0])
    for event in (ProgressEvent("infer", 0, 40), ProgressEvent("infer", 40, 40)):
        now[0] += 4.0
        tracker.update(event)
    assert tracker.measuredCosts((40, 512, 512), config, 1, 10.0, bodyShare=0.5)["sliceS"] == pytest.approx(0.2)


def test_the_estimate_counts_each_view_a_run_averages():
    """A run of `views` N puts every slice through the network N times (issue 25); the slice cost a
    run measures is one view's."""
    costs = {"stepS": 0.1, "sliceS": 0.2, "noiseSliceS": 0.05, "startupS": 1.0}
    config = {"steps": 0, "views": 1}
    one = settings.estimateTime((40, 512, 512), config, "lite", False, costs=costs, bodyShare=0.6).seconds
    four = settings.estimateTime((40, 512, 512), dict(config, views=4), "lite", False, costs=costs,
                                 bodyShare=0.6).seconds
    assert four - 1.0 == pytest.approx(4 * (one - 1.0))
    now = [0.0]
    tracker = ProgressTracker(numSlices=40, steps=0, clock=lambda: now[0])
    for event in (ProgressEvent("infer", 0, 40), ProgressEvent("infer", 40, 40)):
        now[0] += 16.0
        tracker.update(event)
    measured = tracker.measuredCosts((40, 512, 512), dict(config, views=4), 1, 20.0, bodyShare=0.5)
    assert measured["sliceS"] == pytest.approx(0.2)


def test_built_in_time_estimate_matches_the_speed_benchmark_within_30_percent():
    """The panel's first estimate (no local measurement yet) against the whole runs that
    benchmarks/speed.py measured and wrote into docs/SPEED.md (lite, default settings, 512x512xN)."""
    report = (Path(__file__).resolve().parents[1] / "docs" / "SPEED.md").read_text(encoding="utf-8")
    # this tree's rows (an engine column since issue #28: other engines measured beside it are not the panel's)
    rows = re.findall(r"^\| (\d+) \|(?: this tree \|)?(?: [\d.]+ \|){9} ([\d.]+) \|", report, flags=re.MULTILINE)
    assert len(rows) >= 3, "docs/SPEED.md has no whole-run table"
    # those runs (2026-12-01) averaged one view of each slice
    config = {"steps": 200, "batch_size": 16, "patch_size": 64, "pseudo_noise": "fitted", "guard": True, "views": 1}
    for slices, measured in rows:
        estimate = settings.estimateTime((int(slices), 512, 512), config, "lite", False).seconds
        assert abs(estimate / float(measured) - 1) <= 0.30, (slices, estimate, measured)


def test_progress_tracker_maps_phases_and_measures_them():
    now = [0.0]
    tracker = ProgressTracker(numSlices=10, steps=4, clock=lambda: now[0])
    events = [ProgressEvent("loading"), ProgressEvent("noise", 0, 4), ProgressEvent("noise", 4, 4),
              ProgressEvent("adapt", 0, 4), ProgressEvent("adapt", 4, 4, loss=0.1),
              ProgressEvent("infer", 0, 6), ProgressEvent("infer", 6, 6),  # the guard's short check
              ProgressEvent("infer", 0, 10), ProgressEvent("infer", 10, 10), ProgressEvent("writing")]
    percents = []
    for event in events:
        now[0] += 1.0
        tracker.update(event)
        percents.append(tracker.percent)
    assert percents == sorted(percents) and percents[-1] == 96
    assert tracker.phaseKey(ProgressEvent("infer", 1, 6)) == "guard"
    assert "Adapting" in ProgressEvent("adapt", 2, 4).describe()
    costs = tracker.measuredCosts((10, 512, 512), {"steps": 4, "batch_size": 16, "views": 1}, 1, totalSeconds=20.0)
    assert costs["stepS"] == pytest.approx(0.25) and costs["sliceS"] == pytest.approx(0.1)
    assert costs["startupS"] == pytest.approx(20.0 - 1 - 1 - 1 - 1)  # total minus the timed phases


def test_layout_xml_has_three_axial_views_of_its_own_and_is_skipped_headless(scene):
    root = ET.fromstring(nodes.threeViewLayoutXml())
    views = root.findall("./item/view")
    assert [v.get("singletontag") for v in views] == [tag for tag, _, _ in nodes.THREE_VIEWS]
    assert all(v.find("property[@name='orientation']").text == "Axial" for v in views)
    node = add_volume(scene, ct_array())
    assert nodes.showThreeViews(node, node, node) is False


# -- the module file, panel and packaging agree --------------------------------------------------

def module_tree():
    return ast.parse((MODULE_DIR / "SelfSupCTDenoise.py").read_text(encoding="utf-8"))


def parameter_fields():
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == "SelfSupCTDenoiseParameterNode":
            return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]
    raise AssertionError("no parameter node class")


def test_every_parameter_has_a_bound_widget_in_the_ui():
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "SelfSupCTDenoise.ui")
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert set(parameter_fields()) == bound


def test_module_file_imports_no_torch_or_engine_pipeline_at_load():
    for node in module_tree().body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
            assert not any(n.split(".")[0] == "torch" or "pipeline" in n for n in names), names


def test_logic_package_imports_without_torch_or_application():
    code = ("import sys; import SelfSupCTDenoiseSlicer.job, SelfSupCTDenoiseSlicer.settings, "
            "SelfSupCTDenoiseSlicer.status, SelfSupCTDenoiseLib.commands.worker; "
            "bad = [m for m in ('torch', 'qt', 'ctk') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cmake_lists_every_shipped_file():
    """A file missing from the module's CMakeLists works from the source tree but is missing from the
    installed extension."""
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "SelfSupCTDenoise")
    listed = set(re.findall(r"^\s+([\w./-]+\.[\w.]+)\s*$", cmake, re.MULTILINE))
    shipped = set()
    for package in ("SelfSupCTDenoiseLib", "SelfSupCTDenoiseSlicer"):
        shipped |= {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / package).rglob("*.py")}
    for folder in ("UI", "Icons", "Models", "Sample"):
        base = MODULE_DIR / "Resources" / folder
        if base.is_dir():
            shipped |= {str(p.relative_to(MODULE_DIR)) for p in base.rglob("*") if p.is_file()}
    shipped = {s for s in shipped if "__pycache__" not in s}
    missing = sorted(shipped - listed)
    assert not missing, f"not listed in SelfSupCTDenoise/CMakeLists.txt: {missing}"
    stale = sorted(s for s in listed if s.startswith(("SelfSupCTDenoiseLib", "SelfSupCTDenoiseSlicer", "Resources/"))
                   and not (MODULE_DIR / s).exists())
    assert not stale, f"listed in CMakeLists.txt but missing: {stale}"


# -- the module file's Logic, with the application's Python pieces stubbed ------------------------

def _stub_application(monkeypatch):
    """Minimal stand-ins for what the Slicer application adds to `slicer` (ScriptedLoadableModule,
    parameterNodeWrapper, i18n, app) and for `qt`; enough to import the module file and drive its
    Logic. The MRML scene and nodes stay the real ones from slicer-core."""
    import types

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            return scene_parameter_node

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(base, name, type(name, (), {}))
    base.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scene_parameter_node = slicer.vtkMRMLScriptedModuleNode()

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    for name in ("Choice", "WithinRange", "Decimals", "SingleStep"):
        setattr(wrapper, name, type(name, (), {"__init__": lambda self, *args: setattr(self, "args", args)}))

    def parameterNodeWrapper(cls):
        def init(self, node=None):
            for field in cls.__annotations__:
                setattr(self, field, getattr(cls, field, None))
        return type(cls.__name__, (), {"__init__": init, "__annotations__": cls.__annotations__})
    wrapper.parameterNodeWrapper = parameterNodeWrapper

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    qt = types.ModuleType("qt")
    store = {}
    qt.QSettings = type("QSettings", (), {"value": lambda self, key, default=None: store.get(key, default),
                                          "setValue": lambda self, key, value: store.__setitem__(key, value)})
    qt.QTimer = type("QTimer", (), {})

    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)
    return store


def _load_module(monkeypatch, tmp_path, fake_worker=None):
    """(module file, its Logic, the QSettings store, the models folder): the module file loaded with
    the application stubbed and one 'lite' bundle folder; the Logic runs `fake_worker` when given."""
    import importlib.util

    store = _stub_application(monkeypatch)
    models = tmp_path / "Models"
    (models / "lite").mkdir(parents=True)
    (models / "lite" / "manifest.json").write_text(json.dumps(
        {"profile": {"name": "lite"}, "files": {"noise_models": [{}, {}, {}]}}))
    monkeypatch.setattr(settings, "modelsDir", lambda: models)
    spec = importlib.util.spec_from_file_location("SelfSupCTDenoiseModule", MODULE_DIR / "SelfSupCTDenoise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    logic = module.SelfSupCTDenoiseLogic()
    logic.gpus = []
    if fake_worker is not None:
        env = dict(os.environ, FAKE_MODE="ok")
        monkeypatch.setattr(logic, "createRunner", lambda: WorkerRunner(
            command=[sys.executable, str(fake_worker)], environment=env, tempRoot=str(tmp_path)))
    return module, logic, store, models


def test_module_logic_runs_from_parameter_node_to_output_nodes(scene, fake_worker, tmp_path, monkeypatch):
    module, logic, store, models = _load_module(monkeypatch, tmp_path, fake_worker)
    params = module.SelfSupCTDenoiseParameterNode()
    params.inputVolume = add_volume(scene, ct_array(), name="CT")
    params.strength, params.steps, params.seed, params.threads, params.views = 0.5, 7, 11, 1, 2
    assert logic.estimateText(params) == "Estimated time: measuring this computer's speed…"
    assert logic.probes[("lite", "cpu")].wait(60)  # the fake worker cannot probe: the table's estimate
    assert "Estimated time: about" in logic.estimateText(params)
    job = logic.processWithParameters(params, waitForCompletion=True, timeout=30)
    assert job.state is RunState.COMPLETED, job.message
    assert job.outputVolume.GetName() == "CT denoised" and job.noiseMapVolume.GetName() == "CT noise map"
    assert job.config["strength"] == 0.5 and job.config["steps"] == 7 and job.config["seed"] == 11
    assert job.config["threads"] == 1 and job.config["views"] == 2  # the panel's Advanced values reach the worker
    assert job.bundlePath == str(models / "lite") and job.forceCpu is False
    recorded = json.loads(store[module.SelfSupCTDenoiseLogic.SETTINGS_KEY])["lite/cpu"]
    assert recorded["startupS"] >= 0 and "sliceS" in recorded
    assert "measured on this computer" in logic.estimateText(params)
    # Strength after the run, through the module Logic: the kept full result, no new adaptation.
    logic.applyStrength(params.inputVolume, job.outputVolume, job.noiseMapVolume, 0.0)
    assert np.array_equal(slicer.util.arrayFromVolume(job.outputVolume), slicer.util.arrayFromVolume(params.inputVolume))
    assert not np.any(slicer.util.arrayFromVolume(job.noiseMapVolume))
    report, table = logic.regionNoiseTable(params.inputVolume, job.outputVolume, job.noiseMapVolume)
    assert table.GetName() == "CT noise regions" and "method_noise" in report

    job_outputs = (job.outputVolume, job.noiseMapVolume)
    # Scripting with engine field names, pretrained only, no noise map.
    job = logic.process(params.inputVolume, createNoiseMap=False, config={"steps": 0, "batch_size": 4})
    assert job.state is RunState.COMPLETED and job.noiseMapVolume is None and job.config["batch_size"] == 4
    with pytest.raises(InputError):
        logic.process(params.inputVolume, config={"strength": 2.0})
    with pytest.raises(ValueError, match="last run"):  # a new run replaced the kept result
        logic.applyStrength(params.inputVolume, job_outputs[0], job_outputs[1], 0.5)


#: The rules of the Extensions Index's own check (Slicer/ExtensionsIndex, scripts/check_description_files.py)
#: and of the catalog entry schema it validates against (Slicer/Slicer, Schemas/
#: slicer-extension-catalog-entry-schema-v1.0.1.json: required keys, no other keys, value types).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                 "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
#: Slicer's convention for contributors: "Name (Organisation)", comma separated.
CONTRIBUTORS = re.compile(r"[^,()]+ \([^()]+\)(, [^,()]+ \([^()]+\))*")


def _github_repository(url):
    """(owner, repository) of a github.com or raw.githubusercontent.com URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.netloc in ("github.com", "raw.githubusercontent.com"), url
    owner, repository = parts.path.strip("/").split("/")[:2]
    return owner, os.path.splitext(repository)[0]


def test_extension_metadata_passes_the_index_checks_offline():
    """What the Extensions Index checks, without the network: the catalog entry against the schema,
    extension name = catalog file name = CMake project and not starting with 'Slicer', repository
    name starting with 'Slicer', one repository in every URL (catalog, CMake, module help, README),
    icon and screenshots files of this repository, contributors as "Name (Organisation)"."""
    (catalog_path,) = [p for p in ROOT.glob("*.json") if "slicer-extension-catalog-entry-schema" in p.read_text(encoding="utf-8")]
    extension_name = catalog_path.stem
    raw = catalog_path.read_bytes()
    assert b"\r" not in raw  # the Index wants LF line endings
    catalog = json.loads(raw)
    assert CATALOG_REQUIRED <= set(catalog) <= set(CATALOG_TYPES)
    assert all(type(value) is CATALOG_TYPES[key] for key, value in catalog.items()), catalog
    assert all(isinstance(name, str) for name in catalog.get("build_dependencies", []))
    assert catalog.get("scm_type", "git") in ("git", "local") and 1 <= catalog.get("tier", 1) <= 5
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v1\.0\.[0-9]+\.json#?", catalog["$schema"])
    assert not extension_name.lower().startswith("slicer")
    assert catalog["scm_url"].split("://")[0] in ("git", "https")
    owner, repository = _github_repository(catalog["scm_url"])
    assert repository.startswith(REPOSITORY_PREFIXES), repository

    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.findall(r"project\s*\(\s*([^\s\)]+)", cmake)[0] == extension_name

    def cmake_value(name):
        return re.findall(rf'set\s*\({name}\s*"([^"]+)"\s*\)', cmake)[0]

    assert cmake_value("EXTENSION_CATEGORY") == catalog["category"] == "Filtering"  # an Index category
    assert cmake_value("EXTENSION_DEPENDS").split() == catalog["build_dependencies"] == ["PyTorch"]
    assert _github_repository(cmake_value("EXTENSION_HOMEPAGE")) == (owner, repository)
    icon = cmake_value("EXTENSION_ICONURL")
    for url in [icon] + cmake_value("EXTENSION_SCREENSHOTURLS").split():
        assert _github_repository(url) == (owner, repository), url
        revision, path = url.split(f"/{owner}/{repository}/", 1)[1].split("/", 1)
        assert revision == catalog["scm_revision"] and (ROOT / path).is_file() and path.endswith(".png"), url
    from PIL import Image
    assert Image.open(ROOT / icon.split(f"/{catalog['scm_revision']}/", 1)[1]).size == (128, 128)
    for text in ((MODULE_DIR / "SelfSupCTDenoise.py").read_text(encoding="utf-8"), (MODULE_DIR / "README-Slicer.md").read_text(encoding="utf-8"),
                 (ROOT / "README.md").read_text(encoding="utf-8"), cmake):
        for url in re.findall(r"https://(?:raw\.githubusercontent|github)\.com/[^\s\"'()<>#`]+", text):
            if "selfsupctdenoise" in url.lower():  # links to this project, not to others
                assert _github_repository(url) == (owner, repository), url
    assert CONTRIBUTORS.fullmatch(cmake_value("EXTENSION_CONTRIBUTORS")), cmake_value("EXTENSION_CONTRIBUTORS")
    module_contributors = [ast.literal_eval(node.value) for node in ast.walk(module_tree())
                           if isinstance(node, ast.Assign)
                           and ast.unparse(node.targets[0]) == "self.parent.contributors"]
    assert module_contributors and all(CONTRIBUTORS.fullmatch(name) for name in module_contributors[0])
    assert "Apache License" in (ROOT / "LICENSE.txt").read_text(encoding="utf-8")[:200]


def test_dependency_checks_read_metadata_only():
    from SelfSupCTDenoiseSlicer import dependencies

    assert dependencies.satisfies("2.13.0+cpu", ">=2.1") and not dependencies.satisfies("2.0.1", ">=2.1")
    assert dependencies.missingRequirements(["numpy>=1.0", "no-such-package-xyz>=1"]) == ["no-such-package-xyz>=1"]
    assert dependencies.torchMissing() is None  # CI installs torch
    assert dependencies.missingRequirements(dependencies.SLICER_REQUIREMENTS + dependencies.PIP_REQUIREMENTS) == []


def test_dependency_installation_paths_give_clear_messages(monkeypatch):
    """torch through PyTorchUtils, other packages after a confirmation; no real installation here."""
    import types

    from SelfSupCTDenoiseSlicer import dependencies

    calls = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: calls.append("confirm") or False,
                        raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda req: calls.append(("pip", req)), raising=False)
    real_version = dependencies.installedVersion
    monkeypatch.setattr(dependencies, "installedVersion",
                        lambda name: None if name in ("torch", "scipy") else real_version(name))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(dependencies.DependencyError, match="install 'PyTorch' from the Extensions Manager"):
        dependencies.ensureDependencies()

    class Logic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            return None  # the user said no

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    with pytest.raises(dependencies.DependencyError, match="PyTorch was not installed"):
        dependencies.ensureDependencies()
    assert ("installTorch", True, ">=2.1") in calls

    monkeypatch.setattr(dependencies, "installedVersion",
                        lambda name: None if name == "scipy" else real_version(name))
    with pytest.raises(dependencies.DependencyError, match="declined"):
        dependencies.ensureDependencies()
    assert "confirm" in calls and not any(c[0] == "pip" for c in calls if isinstance(c, tuple))


def test_estimate_knows_which_pseudo_noise_kinds_run_the_noise_models():
    from SelfSupCTDenoiseLib.engine.pseudo import MODEL_KINDS

    assert set(settings.MODEL_NOISE_KINDS) == set(MODEL_KINDS)


def test_module_self_test_runs_on_the_shipped_sample_and_bundle(scene, monkeypatch):
    """The ScriptedLoadableModuleTest of the module file, as Slicer's harness would run it, with the
    application's pieces stubbed: the shipped sample, the shipped bundle, the real worker."""
    import importlib.util
    import unittest

    _stub_application(monkeypatch)
    base = sys.modules["slicer.ScriptedLoadableModule"]
    monkeypatch.setattr(base, "ScriptedLoadableModuleTest", type(
        "ScriptedLoadableModuleTest", (unittest.TestCase,), {"delayDisplay": lambda self, message, *a: None,
                                                             "runTest": lambda self: None}))

    def loadVolume(path):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(path).name.split(".")[0])
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(node)
        return node

    monkeypatch.setattr(slicer.util, "loadVolume", loadVolume, raising=False)
    monkeypatch.setattr(scene, "Clear", lambda *args: None)
    spec = importlib.util.spec_from_file_location("SelfSupCTDenoiseSelfTest", MODULE_DIR / "SelfSupCTDenoise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.SelfSupCTDenoiseLogic, "createRunner", lambda self: WorkerRunner())  # no PythonSlicer
    test = module.SelfSupCTDenoiseTest()
    test.setUp()
    test.test_InputChecks()
    test.setUp()
    test.test_ShortAdaptation()
    names = [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())]
    assert "sample_ldct_d25_hann denoised" in names and "sample_ldct_d25_hann noise map" in names


# -- strength after a run, region noise table (issue 6) --------------------------------------------

def test_strength_after_a_run_reblends_without_adapting_again(scene, fake_worker, tmp_path):
    from SelfSupCTDenoiseSlicer import strength

    array = ct_array()
    input_node = add_volume(scene, array, oblique_matrix())
    job = make_job(fake_worker, tmp_path, input_node, config={"steps": 3, "strength": 0.5})
    job.start()
    assert job.waitForCompletion(30) is RunState.COMPLETED, job.message
    full = array - 10  # the fake worker's strength-1 result
    assert np.array_equal(job.fullStrength, full)
    assert np.array_equal(slicer.util.arrayFromVolume(job.outputVolume), array - 5)  # blended at 0.5
    geometry = ijk_to_ras(job.outputVolume)
    for s, expected in ((0.0, array), (1.0, full), (0.75, np.rint(array - 7.5).astype(np.int16))):
        strength.applyStrength(input_node, job.outputVolume, job.noiseMapVolume, job.fullStrength, s)
        output = slicer.util.arrayFromVolume(job.outputVolume)
        noise = slicer.util.arrayFromVolume(job.noiseMapVolume)
        assert output.dtype == array.dtype and np.array_equal(output, expected)  # 0: input exactly
        assert np.array_equal(noise, array.astype(np.float32) - output)
        assert nodes.readProvenance(job.outputVolume)["parameters"]["strength"] == s
    assert np.array_equal(ijk_to_ras(job.outputVolume), geometry)
    assert np.array_equal(slicer.util.arrayFromVolume(input_node), array)


def test_a_target_noise_level_picks_the_strength_after_the_run_and_a_strength_set_by_hand_replaces_it(
        scene, fake_worker, tmp_path):
    """The panel's target leaves its strength out; the worker runs at strength 1 and the job picks the
    strength with the engine's function on the same arrays and records it; moving the strength
    afterwards records that strength and no target."""
    from SelfSupCTDenoiseLib.engine.provenance import applied_strength
    from SelfSupCTDenoiseLib.engine.target_noise import strength_for_target
    from SelfSupCTDenoiseSlicer import strength

    array = ct_array((4, 64, 64))
    input_node = add_volume(scene, array)
    config = settings.buildConfig(steps=3, period=1, learningRate=1e-4, batchSize=4, seed=0, device="cpu",
                                  strength=0.3, targetNoise=100.0)
    assert config["target_noise"] == 100.0 and config["strength"] == 1.0
    job = make_job(fake_worker, tmp_path, input_node, config=config)
    job.start()
    assert job.waitForCompletion(30) is RunState.COMPLETED, job.message
    record = nodes.readProvenance(job.outputVolume)
    assert record["run"]["target_noise"] == strength_for_target(array, job.fullStrength, 100.0)
    assert record["parameters"]["target_noise"] == 100.0 and record["parameters"]["strength"] == 1.0
    # the input (20 HU of noise) is quieter than the target: strength 0, the input as it is, and said so
    assert job.strength == applied_strength(record) == 0.0 and "at or below the target" in record["run"]["target_noise"]["note"]
    assert np.array_equal(slicer.util.arrayFromVolume(job.outputVolume), array)
    strength.applyStrength(input_node, job.outputVolume, job.noiseMapVolume, job.fullStrength, 1.0)
    record = nodes.readProvenance(job.outputVolume)
    assert record["parameters"]["target_noise"] is None and applied_strength(record) == 1.0


def test_float_input_strength_end_points_are_exact(scene):
    from SelfSupCTDenoiseSlicer import strength

    array = ct_array().astype(np.float32) + 0.3
    full = array * 0.9
    output, noise = strength.blendArrays(array, full, 0.0)
    assert np.array_equal(output, array) and not np.any(noise)
    output, noise = strength.blendArrays(array, full, 1.0)
    assert np.array_equal(output, full) and np.array_equal(noise, array - full)


def test_ras_bounds_to_box_uses_voxel_centres_and_clips():
    from SelfSupCTDenoiseSlicer import regions

    ras_to_ijk = np.linalg.inv(np.diag([-0.5, -0.5, 2.0, 1.0]))  # RAS x = -0.5 i, y = -0.5 j, z = 2 k
    # i in [2, 6], j in [-4 (clipped), 3], k in [1, 2.5]
    box = regions.rasBoundsToBox((-3.0, -1.0, -1.5, 2.0, 2.0, 5.0), ras_to_ijk, (4, 24, 20))
    assert (box.z0, box.z1, box.y0, box.y1, box.x0, box.x1) == (1, 3, 0, 4, 2, 7)
    with pytest.raises(ValueError, match="any voxel"):
        regions.rasBoundsToBox((100.0, 101.0, 0, 1, 0, 1), ras_to_ijk, (4, 24, 20))


def _denoised_pair(scene, matrix=None):
    rng = np.random.default_rng(1)
    z, y, x = np.indices((6, 72, 64))  # 1 mm voxels: room for a 15 mm uniform box with margins
    body = (y - 36) ** 2 + (x - 32) ** 2 < 30 ** 2
    clean = np.where(body, 40.0, -1000.0)
    array = np.round(clean + rng.normal(0, 25, clean.shape)).astype(np.int16)
    denoised = np.round(clean + rng.normal(0, 5, clean.shape)).astype(np.int16)
    input_node = add_volume(scene, array, matrix, name="CT")
    output_node = add_volume(scene, denoised, matrix, name="CT denoised")
    noise_node = add_volume(scene, array.astype(np.float32) - denoised, matrix, name="CT noise map")
    return array, denoised, input_node, output_node, noise_node


def test_region_noise_table_in_a_roi_matches_numpy(scene):
    from SelfSupCTDenoiseSlicer import regions

    array, denoised, input_node, output_node, noise_node = _denoised_pair(scene, oblique_matrix())
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -3.0, 7.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    for node in (input_node, output_node, noise_node):
        node.SetAndObserveTransformNodeID(transform.GetID())
    # An ROI around voxels (z 2..3, y 20..27, x 15..24), placed in world coordinates.
    ijk_to_world = shift @ ijk_to_ras(input_node)
    corners = np.array([[i, j, k, 1.0] for i in (15, 24) for j in (20, 27) for k in (2, 3)]) @ ijk_to_world.T
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetXYZ(*((corners[:, :3].min(0) + corners[:, :3].max(0)) / 2))
    roi.SetSize(*(corners[:, :3].max(0) - corners[:, :3].min(0) + 1e-3))
    report, table = regions.regionNoiseTable(input_node, output_node, noise_node, roi)
    (box,) = report["boxes"]
    # the RAS-aligned ROI around an oblique box covers at least that box
    assert box.z0 <= 2 and box.z1 >= 4 and box.y0 <= 20 and box.y1 >= 28 and box.x0 <= 15 and box.x1 >= 25
    assert table.GetName() == "CT noise regions" and not report["regions_found_automatically"]
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns == list(regions.COLUMNS)
    vtable = table.GetTable()
    for row, image in enumerate((array.astype(np.float32), denoised.astype(np.float32),
                                 array.astype(np.float32) - denoised)):
        values = image[box.slices].astype(np.float64)
        assert vtable.GetValueByName(row, "mean HU").ToDouble() == pytest.approx(values.mean(), abs=1e-9)
        assert vtable.GetValueByName(row, "SD HU").ToDouble() == pytest.approx(values.std(ddof=1), abs=1e-9)
        assert vtable.GetValueByName(row, "voxels").ToInt() == values.size
    assert table.GetAttribute("SelfSupCTDenoise_method_noise.reading") == report["method_noise"]["reading"]
    assert "Method noise" in regions.describe(report)
    again, same_table = regions.regionNoiseTable(input_node, output_node, noise_node, roi)
    assert same_table is table  # measured again into the same table


def test_region_noise_table_without_roi_finds_uniform_regions_and_shows_them(scene):
    from SelfSupCTDenoiseSlicer import regions

    array, denoised, input_node, output_node, noise_node = _denoised_pair(scene)
    report, table = regions.regionNoiseTable(input_node, output_node, noise_node)
    assert report["regions_found_automatically"] and report["boxes"]
    box = report["boxes"][0]
    sd = float(np.std(array[box.slices].astype(np.float64), ddof=1))
    assert table.GetTable().GetValueByName(0, "SD HU").ToDouble() == pytest.approx(sd)
    last = table.GetNumberOfRows() - 1
    assert table.GetTable().GetValueByName(last, "image").ToString().startswith("HU shift")
    assert table.GetTable().GetValueByName(last, "mean HU").ToDouble() == pytest.approx(report["hu_shift"]["overall"])
    roi = regions.boxToRoi(box, input_node, name="CT noise region")
    assert regions.roiBox(roi, input_node) == box  # the ROI shown is the box measured


# -- issue 12: panel = CLI, scripting names, no torch in Slicer, views, Windows, catalog ----------

def test_panel_and_command_line_give_the_same_voxels_below_full_strength(scene, tmp_path, tiny_bundle):
    """Same input, seed and strength 0.5: the panel's volume equals the CLI's output voxel for voxel
    (the worker hands back its strength-1 result unrounded; the panel blends it like the engine)."""
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.data.phantom import noisy_pair
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig
    from SelfSupCTDenoiseLib.files.denoise_file import denoise_file
    from SelfSupCTDenoiseSlicer import strength

    ldct, _ = noisy_pair(4, 48, 30.0, seed=6)
    array = np.round(ldct).astype(np.int16)
    config = settings.buildConfig(steps=4, period=2, learningRate=1e-4, batchSize=4, seed=3, device="cpu",
                                  strength=0.5, patch_size=32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(tmp_path / "in.nrrd"))
    denoise_file(tmp_path / "in.nrrd", tmp_path / "cli.nrrd", tmp_path / "cli_noise.nrrd", tiny_bundle.path,
                 AdaptConfig.from_dict(config))
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nrrd")))
    cli_noise = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli_noise.nrrd")))
    assert float(np.abs(cli_noise).mean()) > 1.0  # the model changed the image: the comparison means something

    input_node = add_volume(scene, array, np.diag([-0.8, -0.8, 2.0, 1.0]), name="phantom")
    runner = WorkerRunner(pythonPath=[str(MODULE_DIR)], tempRoot=str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    job = DenoiseJob(input_node, config, bundlePath=str(tiny_bundle.path), runner=runner, forceCpu=True)
    job.start()
    assert job.waitForCompletion(180) is RunState.COMPLETED, job.message
    assert job.fullStrength.dtype == np.float32  # not rounded to the input's int16
    panel = slicer.util.arrayFromVolume(job.outputVolume)
    assert panel.dtype == cli.dtype and np.array_equal(panel, cli)
    assert np.array_equal(slicer.util.arrayFromVolume(job.noiseMapVolume), cli_noise)
    # Moving the strength after the run and back gives the same voxels again.
    for value in (1.0, 0.5):
        strength.applyStrength(input_node, job.outputVolume, job.noiseMapVolume, job.fullStrength, value)
    assert np.array_equal(slicer.util.arrayFromVolume(job.outputVolume), cli)


def test_process_config_takes_panel_or_engine_names_and_refuses_unknown_keys(scene, fake_worker, tmp_path,
                                                                              monkeypatch):
    module, logic, store, models = _load_module(monkeypatch, tmp_path, fake_worker)
    node = add_volume(scene, ct_array(), name="CT")
    job = logic.process(node, createNoiseMap=False, timeout=30,
                        config={"learningRate": 3e-4, "batchSize": 5, "steps": 2})
    assert job.state is RunState.COMPLETED, job.message
    assert (job.config["lr"], job.config["batch_size"], job.config["steps"]) == (3e-4, 5, 2)
    job = logic.process(node, createNoiseMap=False, timeout=30,
                        config={"lr": 2e-4, "batch_size": 6, "steps": 9, "pretrainedOnly": True})
    assert (job.config["lr"], job.config["batch_size"], job.config["steps"]) == (2e-4, 6, 0)
    before = nodes.sceneSnapshot(scene)
    with pytest.raises(InputError, match=r"Unknown parameter\(s\): learning_rate") as info:
        logic.process(node, config={"learning_rate": 1e-3})
    assert "learningRate" in str(info.value) and "batch_size" in str(info.value)  # says what is accepted
    with pytest.raises(InputError, match="'learningRate' and 'lr' are the same parameter"):
        logic.process(node, config={"lr": 1e-4, "learningRate": 2e-4})
    assert nodes.sceneSnapshot(scene) == before  # refused before anything started


def test_a_complete_run_imports_no_torch_into_the_panel_process(tmp_path, tiny_bundle):
    """A whole run through the module's Logic (real worker, tiny bundle) in a fresh interpreter, with
    what the panel does before (the estimate, from a probe of the computer's speed) and when it
    completes (status line, strength change): torch stays out of the panel's process (importing it
    would freeze the GUI and could turn a finished run into a failure)."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(ROOT / "Testing")!r}, {str(MODULE_DIR)!r}]
        import importlib.util
        import pytest
        import slicer
        import test_slicer_logic as t

        t._stub_application(pytest.MonkeyPatch())
        slicer.mrmlScene = scene = slicer.vtkMRMLScene()
        spec = importlib.util.spec_from_file_location("SelfSupCTDenoiseModule", t.MODULE_DIR / "SelfSupCTDenoise.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        logic = module.SelfSupCTDenoiseLogic()
        logic.gpus = []
        logic.createRunner = lambda: t.WorkerRunner(pythonPath=[str(t.MODULE_DIR)], tempRoot={str(tmp_path)!r})
        volume = t.add_volume(scene, t.ct_array((3, 40, 40)), name="CT")
        t.settings.modelsDir = lambda: t.Path({str(tiny_bundle.path.parent)!r})  # auto picks the tiny bundle
        params = module.SelfSupCTDenoiseParameterNode()
        params.inputVolume, params.device = volume, "cpu"
        estimates = [logic.estimateText(params)]  # starts the probe of this computer's speed
        assert logic.probes[("tiny", "cpu")].wait(120)
        estimates.append(logic.estimateText(params))
        job = logic.process(volume, bundlePath={str(tiny_bundle.path)!r}, timeout=120,
                            config={{"steps": 2, "period": 1, "batch_size": 2, "patch_size": 32, "device": "cpu"}})
        text = logic.completedRunText(job)  # the panel's status line
        logic.applyStrength(volume, job.outputVolume, job.noiseMapVolume, 0.5)
        print(json.dumps({{"state": job.state.value, "message": job.message, "text": text, "estimates": estimates,
                          "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["state"] == "completed", report["message"]
    assert "noise" in report["text"] and report["torch"] == []
    assert "measuring" in report["estimates"][0] and "probed on this computer" in report["estimates"][1]


def test_result_layout_has_its_own_views_and_leaves_the_standard_ones_alone(scene, monkeypatch):
    """Real layout logic and slice logics; only the layout manager's widget lookup is stubbed."""
    import types

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layoutLogic = slicer.vtkMRMLLayoutLogic()
    layoutLogic.SetMRMLScene(scene)
    layoutNode = layoutLogic.GetLayoutNode()
    layoutNode.SetViewArrangement(layoutNode.SlicerLayoutFourUpView)

    def sliceNode(name):
        found = [n for n in (scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")))
                 if n.GetLayoutName() == name]
        return found[0] if found else None

    standard = {name: sliceNode(name).GetOrientation() for name in ("Red", "Yellow", "Green")}
    assert standard == {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    sliceLogics = {}

    def sliceWidget(name):
        node = sliceNode(name)
        if node is None:
            return None
        if name not in sliceLogics:
            sliceLogics[name] = slicer.vtkMRMLSliceLogic()
            sliceLogics[name].SetMRMLScene(scene)
            sliceLogics[name].SetSliceNode(node)
        return types.SimpleNamespace(sliceLogic=lambda: sliceLogics[name])

    layoutManager = types.SimpleNamespace(layoutLogic=lambda: layoutLogic, sliceWidget=sliceWidget)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(layoutManager=lambda: layoutManager), raising=False)
    array = ct_array()
    shown = [add_volume(scene, array, name="CT"), add_volume(scene, array - 5, name="CT denoised"),
             add_volume(scene, np.full(array.shape, 5.0, np.float32), name="CT noise map")]
    for _ in range(2):  # the second time reuses the registered layout
        assert nodes.showThreeViews(*shown) is True
    assert layoutNode.GetViewArrangement() == nodes.THREE_VIEW_LAYOUT_ID
    assert {name: sliceNode(name).GetOrientation() for name in standard} == standard
    tags = [tag for tag, _, _ in nodes.THREE_VIEWS]
    assert len(set(tags)) == 3 and not set(tags) & {"Red", "Yellow", "Green"}
    for tag, volume in zip(tags, shown):
        assert sliceNode(tag).GetOrientation() == "Axial"
        composite = sliceLogics[tag].GetSliceCompositeNode()
        assert composite.GetBackgroundVolumeID() == volume.GetID() and composite.GetLinkedControl()


def test_gpu_detection_hides_the_console_on_windows(monkeypatch):
    import shutil

    pretend_windows(monkeypatch)
    calls = []

    def run(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0, "NVIDIA RTX A4000, 16376\n", "")

    monkeypatch.setattr(shutil, "which", lambda name: "C:/Windows/System32/nvidia-smi.exe")
    monkeypatch.setattr(subprocess, "run", run)
    assert settings.detectGpus() == [settings.GpuInfo("NVIDIA RTX A4000", 16376)]
    assert_hidden_console(calls[0][1])


def test_translated_texts_are_constant_strings():
    """`_()` looks a text up by its exact source: an f-string or a computed text is never translated
    (values go in with .format after the lookup)."""
    for path in [MODULE_DIR / "SelfSupCTDenoise.py", *sorted((MODULE_DIR / "SelfSupCTDenoiseSlicer").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("_", "tr", "translate"):
                assert all(isinstance(arg, ast.Constant) and isinstance(arg.value, str) for arg in node.args), (
                    f"{path.name}:{node.lineno}: {ast.unparse(node)[:120]}")


def test_module_help_names_the_paper(monkeypatch):
    import importlib.util
    import types

    _stub_application(monkeypatch)
    spec = importlib.util.spec_from_file_location("SelfSupCTDenoiseModule", MODULE_DIR / "SelfSupCTDenoise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.ScriptedLoadableModule, "__init__", lambda self, parent: setattr(self, "parent", parent),
                        raising=False)
    parent = types.SimpleNamespace()
    module.SelfSupCTDenoise(parent)
    assert module.PAPER in parent.helpText and "{" not in parent.helpText


def test_auto_bundle_is_lite_on_cuda_unless_a_bundle_was_measured_better_there(tmp_path):
    """The panel and the command line pick the same bundle, and the panel says which. The shipped
    `paper` bundle scored below `lite` on unseen noise (issue 25), so `auto` never picks a bundle for
    CUDA only because it is bigger: only one whose manifest says it was measured better there."""
    import json

    from SelfSupCTDenoiseLib.engine.bundle import default_bundle_for_device

    lite_only, both, preferred = tmp_path / "lite_only", tmp_path / "both", tmp_path / "preferred"
    for folder, names in ((lite_only, ("lite",)), (both, ("lite", "paper")), (preferred, ("lite", "paper"))):
        for name in names:
            (folder / name).mkdir(parents=True)
            manifest = {"auto_on": ["cuda"]} if folder == preferred and name == "paper" else {}
            (folder / name / "manifest.json").write_text(json.dumps(manifest))
        for useCuda in (True, False):
            assert settings.resolveBundle("auto", useCuda, folder=folder) == default_bundle_for_device(
                "cuda" if useCuda else "cpu", folder)
    assert settings.resolveBundle("auto", True, folder=lite_only).name == "lite"
    assert settings.resolveBundle("auto", True, folder=both).name == "lite"
    assert settings.resolveBundle("auto", True, folder=preferred).name == "paper"
    assert settings.resolveBundle("auto", False, folder=preferred).name == "lite"
    assert "picks 'lite'" in settings.autoBundleHelp(True, lite_only)
    assert "picks 'lite'" in settings.autoBundleHelp(True, both)
    assert "picks 'paper'" in settings.autoBundleHelp(True, preferred)
    assert "picks 'lite'" in settings.autoBundleHelp(False, both)
    # what auto picks on CUDA, and why (the panel's Detected line and the log)
    assert settings.autoBundlePick(True, both) == ("Model auto on CUDA picks 'lite': no bundle's manifest lists "
                                                   "'cuda' under auto_on (measured at least as good as lite there).")
    assert "picks 'paper': its manifest lists 'cuda' under auto_on" in settings.autoBundlePick(True, preferred)
