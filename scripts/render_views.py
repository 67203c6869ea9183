"""Regenerates Resources/Screenshots/three-views.png from a real run, off screen.

    PYTHONPATH=SelfSupCTDenoise python scripts/render_views.py [--out PNG]   # slicer-core, torch, matplotlib

The module's Logic runs with the panel's default settings (its parameter node's defaults) on the
shipped sample, with the bundle 'auto' picks, through its worker (the engine in a child process, as in
Slicer). The module's own `showThreeViews` then sets up its three views on real slice logics
(vtkMRMLSliceLogic, slicer-core wheel); their blended output is the picture. Only the Slicer
application's pieces are stand-ins (layout manager, QSettings, parameter-node wrapper), and a
blue-white-red table for Slicer's DivergingBlueRed colour file, which the wheel lacks. matplotlib only
lays the three images out with the caption, whose numbers come from this run.

The PNG's text chunks record what Testing/test_screenshots.py compares with the tree: the bundle's
SHA-256 (of its manifest.json, as the engine identifies a bundle), the sample's and the settings.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SelfSupCTDenoise"
OUT = ROOT / "Resources" / "Screenshots" / "three-views.png"
VIEW_SIZE = (466, 334)  # pixels per view, about the sample's aspect (233 x 167 voxels)
RUN_TIMEOUT_S = 3 * 3600  # 200 steps take minutes; many more on a loaded CPU

sys.path.insert(0, str(MODULE_DIR))

import slicer  # noqa: E402  (slicer-core)
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from SelfSupCTDenoiseLib.engine.bundle import sha256_file  # noqa: E402  (what the test compares with)
from SelfSupCTDenoiseSlicer import nodes  # noqa: E402
from SelfSupCTDenoiseSlicer.runner import RunState, WorkerRunner  # noqa: E402


def slice_nodes(scene) -> dict:
    count = scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")
    found = (scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(count))
    return {node.GetLayoutName(): node for node in found}


def stand_in_application(scene) -> dict:
    """Install what the Slicer application adds to `slicer` and `qt`, enough to import the module
    file and let its Logic run and show results. Returns the slice logics the views get, by tag."""
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleLogic"):
        setattr(base, name, type(name, (), {}))

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    for name in ("Choice", "WithinRange", "Decimals", "SingleStep"):
        setattr(wrapper, name, type(name, (), {"__init__": lambda self, *args: None}))

    def parameterNodeWrapper(cls):
        # An instance holds the declared defaults, as a fresh parameter node does.
        def init(self):
            for field in cls.__annotations__:
                setattr(self, field, getattr(cls, field, None))
        return type(cls.__name__, (), {"__init__": init})
    wrapper.parameterNodeWrapper = parameterNodeWrapper

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    qt = types.ModuleType("qt")
    stored = {}  # no measured costs from an earlier run: a fresh installation
    qt.QSettings = type("QSettings", (), {"value": lambda self, key, default=None: stored.get(key, default),
                                          "setValue": lambda self, key, value: stored.__setitem__(key, value)})
    qt.QTimer = type("QTimer", (), {})

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layoutLogic = slicer.vtkMRMLLayoutLogic()
    layoutLogic.SetMRMLScene(scene)
    logics = {}

    def sliceWidget(tag):
        node = slice_nodes(scene).get(tag)
        if node is None:
            return None
        if tag not in logics:
            node.SetDimensions(*VIEW_SIZE, 1)
            logics[tag] = slicer.vtkMRMLSliceLogic()
            logics[tag].SetMRMLScene(scene)
            logics[tag].SetSliceNode(node)
        return types.SimpleNamespace(sliceLogic=lambda: logics[tag])

    layoutManager = types.SimpleNamespace(layoutLogic=lambda: layoutLogic, sliceWidget=sliceWidget)
    sys.modules.update({"slicer.ScriptedLoadableModule": base, "slicer.parameterNodeWrapper": wrapper,
                        "slicer.i18n": i18n, "qt": qt})
    slicer.app = types.SimpleNamespace(processEvents=lambda: None, layoutManager=lambda: layoutManager)
    return logics


def add_colour_tables(scene):
    """Slicer's default colour tables, and a blue-white-red stand-in under the ID of the diverging
    table the module gives the noise map (a colour file of the application, not in the wheel).
    Returns the colour logic: keep it, its deletion removes the default tables again."""
    colourLogic = slicer.vtkMRMLColorLogic()
    colourLogic.SetMRMLScene(scene)
    colourLogic.AddDefaultColorNodes()
    table = slicer.vtkMRMLColorTableNode()
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for i, t in enumerate(np.linspace(-1.0, 1.0, 256)):
        table.SetColor(i, 1.0 - max(t, 0.0), 1.0 - abs(t), 1.0 + min(t, 0.0), 1.0)
    table.SetName("DivergingBlueRed (stand-in)")
    # The scene names a singleton node by class + tag: this gives it the ID the module looks for.
    table.SetSingletonTag(nodes.DIVERGING_COLOR_NODE_ID[len("vtkMRMLColorTableNode"):])
    scene.AddNode(table)
    assert scene.GetNodeByID(nodes.DIVERGING_COLOR_NODE_ID) is not None
    return colourLogic


def load_module():
    spec = importlib.util.spec_from_file_location("SelfSupCTDenoiseModule", MODULE_DIR / "SelfSupCTDenoise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_volume(scene, path: Path):
    """As Slicer's Add Data does: the node is named after the file."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise SystemExit(f"Could not read {path}")
    node.CreateDefaultDisplayNodes()
    return node


def view_image(sliceLogic) -> np.ndarray:
    """The slice view's picture: the logic's blended layers, RGB, top row first."""
    connection = sliceLogic.GetImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    width, height, _ = image.GetDimensions()
    rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return rgba[::-1, :, :3].copy()


def slice_index(sliceLogic, volume) -> int:
    """The volume's slice (0-based k) under the view's centre."""
    rasToIjk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(rasToIjk)
    centre = slicer.util.arrayFromVTKMatrix(sliceLogic.GetSliceNode().GetSliceToRAS())[:, 3]
    return int(round((slicer.util.arrayFromVTKMatrix(rasToIjk) @ centre)[2]))


def window_text(node) -> str:
    display = node.GetDisplayNode()
    return f"W{display.GetWindow():.0f}/L{display.GetLevel():.0f}"


def compose(images, titles, caption: str, out: Path, metadata: dict) -> None:
    """The views side by side, one figure pixel per view pixel (no resampling), titles above, the
    caption below; `metadata` goes into the PNG's text chunks."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    margin, gap, top, bottom = 10, 8, 34, 84  # pixels
    width, height = VIEW_SIZE
    figureWidth, figureHeight = 2 * margin + 3 * width + 2 * gap, top + height + bottom
    figure = plt.figure(figsize=(figureWidth / 100, figureHeight / 100), dpi=100)
    for i, (image, title) in enumerate(zip(images, titles)):
        axis = figure.add_axes(((margin + i * (width + gap)) / figureWidth, bottom / figureHeight,
                                width / figureWidth, height / figureHeight))
        axis.imshow(image, interpolation="none")
        axis.set_title(title, fontsize=11)
        axis.axis("off")
    figure.text(0.5, 8 / figureHeight, "\n".join(textwrap.wrap(caption, 200)), ha="center", va="bottom", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100, metadata=metadata, pil_kwargs={"optimize": True})
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from SelfSupCTDenoiseLib.data.dataset import sample_paths

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logics = stand_in_application(scene)
    colourLogic = add_colour_tables(scene)  # noqa: F841 (kept alive)
    module = load_module()
    logic = module.SelfSupCTDenoiseLogic()
    # The worker runs under this interpreter (Slicer's would be PythonSlicer).
    logic.createRunner = lambda: WorkerRunner(pythonPath=[str(MODULE_DIR)])

    samplePath = sample_paths()["ldct"]
    volume = load_volume(scene, samplePath)
    params = module.SelfSupCTDenoiseParameterNode()  # the panel's defaults
    params.inputVolume = volume
    print(f"Denoising {samplePath.name} with the panel's defaults; this takes minutes.", flush=True)
    job = logic.processWithParameters(params, timeout=RUN_TIMEOUT_S)
    if job.state is not RunState.COMPLETED:
        raise SystemExit(f"The run did not complete: {job.state.value}: {job.message}")
    print(logic.completedRunText(job), flush=True)

    logic.showResults(job)  # the module's three views: windows, colours, fitted slices
    tags = [tag for tag, _, _ in nodes.THREE_VIEWS]
    images = []
    for tag in tags:
        logics[tag].SnapSliceOffsetToIJK()  # on a slice's centre, as Slicer's slice slider puts it
        images.append(view_image(logics[tag]))
    k = slice_index(logics[tags[0]], volume)

    report, _ = logic.regionNoiseTable(volume, job.outputVolume, job.noiseMapVolume)  # the panel's Measure noise
    stats = report.get("region_stats", [])
    if not stats:
        raise SystemExit("No uniform soft-tissue region was found in the sample: the caption has no noise numbers.")
    sd = {image: float(np.mean([r["sd"] for r in stats if r["image"] == image])) for image in ("input", "denoised")}
    regions = len(report["boxes"])
    shift = report["hu_shift"]["overall"]
    info = job.result.info
    bundle = info["bundle"]
    config = job.config
    run = info.get("run") or {}
    halfWindow = job.noiseMapVolume.GetDisplayNode().GetWindow() / 2.0
    guard = (" The guard rejected the adaptation: the pretrained model's output is shown."
             if (run.get("guard") or {}).get("fell_back") else "")
    facts = {"bundle": bundle["name"], "bundle_sha256": bundle["sha256"], "profile": bundle.get("profile"),
             "sample": samplePath.name, "sample_sha256": sha256_file(samplePath), "device": info.get("device"),
             "slice": k, "slices": volume.GetImageData().GetDimensions()[2], "noise_sd_regions": regions,
             "noise_sd_input_hu": round(sd["input"], 2), "noise_sd_denoised_hu": round(sd["denoised"], 2),
             "hu_shift": round(shift, 2), "noise_map_half_window_hu": round(halfWindow, 1)}
    caption = (
        f"Rendered off screen by Slicer's slice pipeline (vtkMRMLSliceLogic, slicer-core "
        f"{importlib.metadata.version('slicer-core')}) as the module's own showThreeViews set it up, not a screenshot "
        f"of the Slicer application; a blue-white-red table stands in for Slicer's DivergingBlueRed colour file. "
        f"Real run of the module's logic and worker: bundle '{bundle['name']}' ({bundle.get('profile')}, sha256 "
        f"{bundle['sha256'][:12]}), the panel's default settings ({config['steps']} adaptation steps, strength "
        f"{config['strength']:g}, seed {config['seed']}), {info.get('device')}.{guard} Input: the shipped sample "
        f"(simulated quarter dose), axial slice {k + 1} of {facts['slices']}. Noise SD in {regions} uniform "
        f"soft-tissue regions (the panel's Measure noise) {sd['input']:.1f} -> {sd['denoised']:.1f} HU; "
        f"mean HU shift {shift:+.1f} HU.")

    titles = [f"LDCT (input), {window_text(volume)}", f"Denoised, {window_text(job.outputVolume)}",
              f"Noise map (input - denoised), 0 \u00b1 {halfWindow:.0f} HU"]
    metadata = {"Title": "SelfSupCTDenoise: LDCT | denoised | noise map", "Description": caption,
                "SelfSupCTDenoise.config": json.dumps(config, sort_keys=True),
                **{f"SelfSupCTDenoise.{key}": str(value) for key, value in facts.items()}}
    compose(images, titles, caption, args.out, metadata)
    print(f"Wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
