"""Regenerates Resources/Screenshots/panel.png: the module's real .ui file in plain Qt, before and while running.

    python scripts/render_panel.py [--out PNG] [--worker-python PY]   # needs PySide6; draws off screen

Qt's own QUiLoader (PySide6) loads SelfSupCTDenoise/Resources/UI/SelfSupCTDenoise.ui. The Slicer/CTK
classes it names do not exist in plain Qt, so the XML is rewritten to plain stand-ins first (group
boxes for collapsible sections, combo boxes for node selectors, a slider + spin box for the slider
widget, a plain table, QWidget). Values are the parameter node's defaults, read from its class in
SelfSupCTDenoise.py (from the source: that file needs Slicer to import) and set the way Slicer's
parameter-node wrapper sets them. The device line, the time estimate and the status line come from
the module's plain-Python `settings` and `status`, which import neither torch nor numpy. With
`--worker-python` (an interpreter that has torch, e.g. the project's .venv/bin/python) the estimate is
the one the panel shows once its probe of the computer answered (`SelfSupCTDenoiseSlicer/probe.py`, the
real worker's `--probe`); without it, the built-in table's, labelled as the panel labels it when its probe fails.

The PNG's text chunks record the .ui file's SHA-256, which Testing/test_screenshots.py compares with
the file in the tree.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6 import __version__ as PYSIDE_VERSION  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SelfSupCTDenoise"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SelfSupCTDenoise.ui"
OUT = ROOT / "Resources" / "Screenshots" / "panel.png"
PANEL_WIDTH = 500
SHOWN_PROGRESS = 0.43  # the running state shown: this share of the adaptation steps done

sys.path.insert(0, str(MODULE_DIR))

from SelfSupCTDenoiseLib.engine.config import VIEW_COUNTS, AdaptConfig  # noqa: E402
from SelfSupCTDenoiseLib.engine.progress import ProgressEvent  # noqa: E402
from SelfSupCTDenoiseSlicer import settings  # noqa: E402
from SelfSupCTDenoiseSlicer.probe import SpeedProbe  # noqa: E402
from SelfSupCTDenoiseSlicer.runner import WorkerRunner  # noqa: E402
from SelfSupCTDenoiseSlicer.status import ProgressTracker  # noqa: E402

#: Slicer/CTK class -> plain Qt stand-in. Their Slicer-only properties are dropped.
STAND_INS = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox",
             "qMRMLTableView": "QTableWidget", "ctkSliderWidget": "SliderWidget"}
SLICER_ONLY = {"collapsed", "nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled", "noneEnabled",
               "noneDisplay", "renameEnabled"}


class SliderWidget(QtWidgets.QWidget):
    """ctkSliderWidget's look: a slider and a spin box showing one value."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self.spinBox = QtWidgets.QDoubleSpinBox()
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spinBox)

    def setup(self, minimum, maximum, decimals, singleStep, value):
        self.spinBox.setRange(minimum, maximum)
        self.spinBox.setDecimals(decimals)
        self.spinBox.setSingleStep(singleStep)
        self.spinBox.setValue(value)
        steps = round((maximum - minimum) / singleStep)
        self.slider.setRange(0, steps)
        self.slider.setValue(round((value - minimum) / singleStep))


def rewritten_ui() -> tuple:
    """(the .ui XML with stand-ins, {selector name: its noneDisplay text})."""
    tree = ET.parse(UI_FILE)
    root = tree.getroot()
    noneDisplay = {}
    for widget in root.iter("widget"):
        original = widget.get("class")
        if original not in STAND_INS:
            continue
        widget.set("class", STAND_INS[original])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if name == "noneDisplay":
                noneDisplay[widget.get("name")] = prop.findtext("string")
            if name in SLICER_ONLY:
                widget.remove(prop)
            elif original == "ctkCollapsibleButton" and name == "text":
                prop.set("name", "title")
    for section in ("customwidgets", "connections"):  # MRML signals and CTK headers: not in plain Qt
        for element in root.findall(section):
            root.remove(element)
    return ET.tostring(root, encoding="unicode"), noneDisplay


def parameter_defaults() -> dict:
    """{field: (default, {"range": (min, max), "decimals": n, "step": s, "choices": [...]})} of the
    parameter node class, evaluated from SelfSupCTDenoise.py's source with the module's own
    `settings` and `AdaptConfig` defaults."""
    source = (MODULE_DIR / "SelfSupCTDenoise.py").read_text(encoding="utf-8")
    node = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ClassDef) and n.name == "SelfSupCTDenoiseParameterNode")

    def option(key):
        return lambda *args: (key, args[0] if len(args) == 1 else args)
    namespace = {"Annotated": typing.Annotated, "settings": settings, "DEFAULTS": AdaptConfig(), "VIEW_COUNTS": VIEW_COUNTS,
                 "vtkMRMLScalarVolumeNode": object, "Choice": option("choices"), "WithinRange": option("range"),
                 "Decimals": option("decimals"), "SingleStep": option("step")}
    fields = {}
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign):
            annotation = eval(compile(ast.Expression(statement.annotation), "parameter node", "eval"), namespace)
            options = dict(getattr(annotation, "__metadata__", ()))
            default = (eval(compile(ast.Expression(statement.value), "parameter node", "eval"), namespace)
                       if statement.value is not None else None)
            fields[statement.target.id] = (default, options)
    return fields


def sample_path() -> Path:
    """The low-dose sample, found as the module's self-test finds it."""
    return next(p for p in sorted((MODULE_DIR / "Resources" / "Sample").glob("*.nrrd")) if "ndct" not in p.name)


def nrrd_sizes(path: Path) -> tuple:
    """Voxels along x, y, z from a NRRD header (plain text up to the first empty line)."""
    with open(path, "rb") as stream:
        for line in stream:
            if not line.strip():
                break
            if line.startswith(b"sizes:"):
                return tuple(int(v) for v in line.split(b":", 1)[1].split())
    raise ValueError(f"{path} has no sizes line")


def fill_values(ui, fields: dict, noneDisplay: dict, inputName: str) -> dict:
    """Each widget with a SlicerParameterName gets its field's default, its range, decimals, step and
    choices, as the parameter-node wrapper's GUI connectors set them. Returns the values shown."""
    values = {name: default for name, (default, _) in fields.items()}
    values["inputVolume"] = inputName  # the widget picks the scene's first volume: the loaded sample
    for widget in ui.findChildren(QtWidgets.QWidget):
        name = widget.property("SlicerParameterName")
        if not name:
            continue
        value, options = values[name], fields[name][1]
        low, high = options.get("range", (None, None))
        if isinstance(widget, SliderWidget):
            widget.setup(low, high, options.get("decimals", 2), options.get("step", 0.01), value)
        elif isinstance(widget, QtWidgets.QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QtWidgets.QComboBox):
            items = options.get("choices") or [value if value is not None else noneDisplay.get(widget.objectName(), "")]
            widget.addItems([str(item) for item in items])
            widget.setCurrentText(str(items[0] if value is None else value))
        elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            if isinstance(widget, QtWidgets.QDoubleSpinBox):
                widget.setDecimals(options.get("decimals", widget.decimals()))
                widget.setSingleStep(options.get("step", widget.singleStep()))
            if low is not None:
                widget.setRange(low, high)
            widget.setValue(value)
    for name, text in noneDisplay.items():  # selectors without a parameter (the noise check's ROI)
        combo = ui.findChild(QtWidgets.QComboBox, name)
        if combo.count() == 0:
            combo.addItem(text)
    return values


def show_state(ui, values: dict, running: bool, arrayShape: tuple, gpus: list, probed) -> None:
    """What the widget's setup() and updateGui() do with these values (SelfSupCTDenoise.py)."""
    child = lambda cls, name: ui.findChild(cls, name)  # noqa: E731
    apply = child(QtWidgets.QPushButton, "applyButton")
    apply.setText("Cancel" if running else "Denoise")
    apply.setEnabled(running or bool(values["inputVolume"]))
    for name in ("inputsCollapsibleButton", "outputsCollapsibleButton", "advancedCollapsibleButton"):
        child(QtWidgets.QGroupBox, name).setEnabled(not running)
    child(QtWidgets.QComboBox, "noiseMapSelector").setEnabled(values["createNoiseMap"] and not running)
    child(QtWidgets.QDoubleSpinBox, "targetNoiseSpinBox").setEnabled(values["useTargetNoise"] and not running)
    child(QtWidgets.QTableWidget, "noiseTableView").hide()
    useCuda = settings.willUseCuda(values["device"], gpus)
    child(QtWidgets.QLabel, "deviceInfoLabel").setText(
        settings.describeDevice(values["device"], gpus)
        + ("\n" + settings.autoBundlePick(useCuda) if values["modelBundle"] == settings.AUTO_BUNDLE else ""))

    config = settings.buildConfig(steps=values["steps"], period=values["period"], learningRate=values["learningRate"],
                                  batchSize=values["batchSize"], seed=values["seed"], device=values["device"],
                                  strength=values["strength"], pretrainedOnly=values["pretrainedOnly"],
                                  threads=int(values["threads"]), ctCheck=values["ctCheck"],
                                  targetNoise=values["targetNoise"] if values["useTargetNoise"] else None)
    bundle = settings.resolveBundle(values["modelBundle"], useCuda)
    manifest = settings.readManifest(bundle)
    profile = (manifest.get("profile") or {}).get("name", bundle.name)
    numNoiseModels = len((manifest.get("files") or {}).get("noise_models", [])) or 3
    deviceKey = settings.deviceKey(useCuda)
    costs = settings.probedCosts(probed, profile, deviceKey) if probed else None  # no run measured yet
    estimate = settings.estimateTime(arrayShape, config, profile, useCuda, numNoiseModels, costs)
    child(QtWidgets.QLabel, "estimateLabel").setText("" if running else f"Estimated time: {estimate.describe()}")

    progress = child(QtWidgets.QProgressBar, "progressBar")
    status = child(QtWidgets.QLabel, "statusLabel")
    if not running:
        progress.hide()
        return
    # One adaptation-step event through the module's tracker; its times from the costs of the estimate.
    costs = costs or settings.tableCosts(profile, deviceKey)
    steps = config["steps"]
    step = round(SHOWN_PROGRESS * steps)
    now = [0.0]
    tracker = ProgressTracker(arrayShape[0], steps, clock=lambda: now[0])
    now[0] = costs["startupS"] + step * costs["stepS"]
    tracker.update(ProgressEvent("adapt", step, steps, eta_s=(steps - step) * costs["stepS"]))
    progress.show()
    progress.setValue(tracker.percent)
    status.setText(tracker.statusText)


def load_panel(loader, xml: str, fields: dict, noneDisplay: dict, running: bool, arrayShape, gpus, inputName, probed):
    buffer = QtCore.QBuffer()
    buffer.setData(xml.encode("utf-8"))
    buffer.open(QtCore.QIODevice.ReadOnly)
    ui = loader.load(buffer)
    if ui is None:
        raise SystemExit(f"QUiLoader could not load {UI_FILE}: {loader.errorString()}")
    values = fill_values(ui, fields, noneDisplay, inputName)
    show_state(ui, values, running, arrayShape, gpus, probed)
    ui.setFixedWidth(PANEL_WIDTH)
    return ui, values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker-python", help="an interpreter with torch: probe this computer as the panel does")
    args = parser.parse_args(argv)

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QUiLoader()
    loader.registerCustomWidget(SliderWidget)
    xml, noneDisplay = rewritten_ui()
    fields = parameter_defaults()
    sample = sample_path()
    arrayShape = tuple(reversed(nrrd_sizes(sample)))  # (slices, rows, columns), as estimateText takes it
    gpus = settings.detectGpus()  # as the panel does (nvidia-smi); none on a machine without a GPU
    inputName = sample.name.split(".")[0]  # Slicer names a loaded volume after its file
    probed = None
    if args.worker_python:  # the panel's default device here is auto: the CPU unless a GPU was detected
        useCuda = settings.willUseCuda(fields["device"][0], gpus)
        bundle = settings.resolveBundle(fields["modelBundle"][0], useCuda)
        probe = SpeedProbe(WorkerRunner(pythonExecutable=args.worker_python), bundle, settings.deviceKey(useCuda),
                           int(fields["threads"][0]))
        probe.wait()
        if not probe.costs:
            raise SystemExit(f"The probe failed: {probe.message}")
        probed = probe.costs

    page = QtWidgets.QWidget()
    page.setAutoFillBackground(True)
    page.setPalette(QtGui.QPalette(QtGui.QColor("white")))
    grid = QtWidgets.QGridLayout(page)
    grid.setHorizontalSpacing(16)
    for column, (title, running) in enumerate((("Before the run", False),
                                                ("While running (Denoise became Cancel)", True))):
        heading = QtWidgets.QLabel(f"<b>{title}</b>")
        heading.setStyleSheet("font-size: 11pt")
        grid.addWidget(heading, 0, column)
        ui, values = load_panel(loader, xml, fields, noneDisplay, running, arrayShape, gpus, inputName, probed)
        frame = QtWidgets.QFrame()  # the panel on the module area's background
        frame.setAutoFillBackground(True)
        frame.setPalette(app.palette())
        QtWidgets.QVBoxLayout(frame).addWidget(ui)
        grid.addWidget(frame, 1, column, QtCore.Qt.AlignTop)

    caption = (
        f"The module's real Resources/UI/SelfSupCTDenoise.ui loaded by Qt's own QUiLoader (PySide6 {PYSIDE_VERSION}, "
        f"Qt {QtCore.qVersion()}, offscreen) - not a screenshot of Slicer. Slicer/CTK widgets do not exist in plain "
        "Qt and are drawn as stand-ins: node selectors as combo boxes, collapsible sections as group boxes (all "
        "expanded here; Advanced, Display and Noise check start collapsed), the strength slider widget as a slider "
        "+ spin box; the noise table stays hidden until a measurement, as in the module. Values are the parameter "
        "node's defaults with the shipped sample as input; the Detected line and the estimate are the module's own "
        f"functions on the rendering computer ({'no GPU' if not gpus else gpus[0].describe()}, {os.cpu_count()} "
        "CPU cores). The right panel's progress and status text come from the module's progress tracker, fed one "
        "adaptation-step event by the rendering script, with the unit costs of the estimate ("
        + ("this computer's, from the module's probe of its speed, as the panel shows once the probe answered)."
           if probed else "the module's built-in table, shown as when the panel's probe of the computer fails)."))
    note = QtWidgets.QLabel(caption)
    note.setWordWrap(True)
    note.setStyleSheet("font-size: 9pt")
    grid.addWidget(note, 2, 0, 1, 2)
    # Shown (off screen) so that the layouts settle; a word-wrapped label in a form layout then gets
    # the height its wrapped text needs (Slicer's scroll area gives it that height too).
    page.show()
    for _ in range(3):
        app.processEvents()
        for label in page.findChildren(QtWidgets.QLabel):
            if label.wordWrap() and label.isVisible() and label.text():
                label.setMinimumHeight(label.heightForWidth(label.width()))
        page.adjustSize()

    image = page.grab().toImage()
    image.setText("Title", "SelfSupCTDenoise panel: before the run and while running")
    image.setText("Description", caption)
    image.setText("SelfSupCTDenoise.ui_sha256", hashlib.sha256(UI_FILE.read_bytes()).hexdigest())
    image.setText("SelfSupCTDenoise.engine_defaults", json.dumps(AdaptConfig().to_dict(), sort_keys=True))
    image.setText("SelfSupCTDenoise.panel_values", json.dumps(values, sort_keys=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(args.out), "PNG"):
        raise SystemExit(f"Could not write {args.out}")
    print(f"Wrote {args.out} ({image.width()} x {image.height()}, {args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
