"""SelfSupCTDenoise: self-supervised, per-volume denoising of low-dose CT in 3D Slicer.

A thin module file: node-level work lives in `SelfSupCTDenoiseSlicer` (testable without the Slicer
application), the computation in the engine `SelfSupCTDenoiseLib`, which runs in a separate process.
Neither torch nor the engine's computing modules are imported here.
"""

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Decimals, SingleStep, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SelfSupCTDenoiseLib.engine.config import VIEW_COUNTS, AdaptConfig
from SelfSupCTDenoiseSlicer import dependencies, nodes, regions, settings
from SelfSupCTDenoiseSlicer import strength as reblend
from SelfSupCTDenoiseSlicer.job import DenoiseJob
from SelfSupCTDenoiseSlicer.probe import SpeedProbe
from SelfSupCTDenoiseSlicer.runner import RunState, WorkerRunner

DEFAULTS = AdaptConfig()
PAPER = ("D. Won, E. Jung, S. An, P. Chikontwe, S. H. Park. Self-Supervised Learning based CT Denoising using "
         "Pseudo-CT Image Pairs. MICCAI PRIME workshop 2021. arXiv:2104.02326")
DOCUMENTATION_URL = "https://github.com/selfsupctdenoise/SlicerSelfSupCTDenoise#readme"
GLOSSARY_URL = "https://github.com/selfsupctdenoise/SlicerSelfSupCTDenoise/blob/main/docs/GLOSSARY.md"


class SelfSupCTDenoise(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SelfSup CT Denoise")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["SelfSupCTDenoise maintainers (independent open-source project)"]
        # Values go in after the lookup: _() finds a translation by the exact source text.
        self.parent.helpText = _(
            "<b>For research use only, not for diagnosis.</b> Denoises a low-dose CT volume (values in HU) by "
            "adapting a pre-trained denoiser to that volume alone (self-supervised test-time adaptation on "
            "pseudo-CT pairs), then shows LDCT | denoised | noise map side by side. Check the noise map: "
            "anatomy visible in it was removed. Everything runs locally; no data leaves this computer.<br><br>"
            "<b>Strength</b> scales what the model removed: output = input - strength x (input - model output); "
            "Low 0.5, Medium 0.75, High 1.0. <b>Target noise</b> instead asks for the noise SD (HU) to leave in "
            "uniform soft tissue; the strength is then chosen from this volume after the run.<br>"
            "<b>Lesions:</b> a small lesion comes out fainter with every denoiser; use <b>Low</b> where lesion "
            "HU values matter (it keeps more of a small lesion's HU difference, though it does not make lesions "
            "easier to find; see the README's section on faint lesions).<br>"
            "<b>Guard:</b> after adapting, the adapted model is compared with the pretrained one on a few slices; "
            "if adaptation removed noise grossly unlike the input's estimated noise, the pretrained model is "
            "used and the status line says so.<br>"
            "See the <a href='{url}'>documentation</a>; the terms (guard, bundle, LDCT/NDCT, NPS, teacher "
            "period, ...) are explained in the <a href='{glossary}'>glossary</a>.<br><br>Method: {paper}.").format(
                url=DOCUMENTATION_URL, glossary=GLOSSARY_URL, paper=PAPER)
        self.parent.acknowledgementText = _(
            "Implements the method of Won et al. (DGIST), who published no code; this is an independent "
            "implementation. Torch is installed through the SlicerPyTorch extension (PyTorchUtils).")


@parameterNodeWrapper
class SelfSupCTDenoiseParameterNode:
    """Panel settings, saved with the scene. Defaults come from the engine's `AdaptConfig`."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode  # none: create "<input> denoised"
    createNoiseMap: bool = True
    noiseMapVolume: vtkMRMLScalarVolumeNode  # none: create "<input> noise map"
    modelBundle: Annotated[str, Choice(settings.bundleChoices())] = settings.AUTO_BUNDLE
    strength: Annotated[float, WithinRange(0.0, 1.0), Decimals(2), SingleStep(0.05)] = DEFAULTS.strength
    useTargetNoise: bool = False  # the strength is chosen after the run to leave `targetNoise` HU
    targetNoise: Annotated[float, WithinRange(0.0, 500.0), Decimals(1), SingleStep(1.0)] = settings.DEFAULT_TARGET_NOISE_HU
    steps: Annotated[int, WithinRange(0, 5000)] = DEFAULTS.steps
    period: Annotated[int, WithinRange(1, 1000)] = DEFAULTS.period
    learningRate: Annotated[float, WithinRange(1e-6, 1e-2), Decimals(6), SingleStep(1e-5)] = DEFAULTS.lr
    batchSize: Annotated[int, WithinRange(1, 256)] = DEFAULTS.batch_size
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = DEFAULTS.seed
    device: Annotated[str, Choice(list(settings.DEVICE_CHOICES))] = DEFAULTS.device
    threads: Annotated[int, WithinRange(0, 1024)] = DEFAULTS.threads  # CPU threads; 0 = all cores
    pretrainedOnly: bool = False
    ctCheck: bool = DEFAULTS.ct_check  # off: denoise what does not look like CT in HU (recorded with the result)
    views: Annotated[int, Choice(list(VIEW_COUNTS))] = DEFAULTS.views  # slices denoised turned/mirrored, averaged


class SelfSupCTDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 100

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: Optional[DenoiseJob] = None
        self._pollTimer = None
        self._recheckPending = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SelfSupCTDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SelfSupCTDenoiseLogic()
        self.logic.detectGpusInBackground()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        for level in ("low", "medium", "high"):
            getattr(self.ui, f"strength{level.capitalize()}Button").connect(
                "clicked(bool)", lambda _checked, level=level: self.onStrengthPreset(level))
        for preset, button in (("soft tissue", "presetSoftTissueButton"), ("lung", "presetLungButton"),
                               ("bone", "presetBoneButton"), ("brain", "presetBrainButton")):
            getattr(self.ui, button).connect("clicked(bool)", lambda _checked, preset=preset: self.onCtPreset(preset))
        self.ui.showResultButton.connect("clicked(bool)", self.onShowResult)
        # After a run the strength re-blends the kept result; only on release, not while dragging.
        self.ui.strengthSliderWidget.tracking = False
        self.ui.strengthSliderWidget.connect("valueChanged(double)", self.onStrengthChanged)
        self.ui.measureNoiseButton.connect("clicked(bool)", self.onMeasureNoise)
        self.ui.noiseTableView.hide()
        self.ui.progressBar.hide()

        # The worker's messages reach the GUI through this timer: the main thread never waits.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SelfSupCTDenoiseParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self.updateGui()

    def updateGui(self, caller=None, event=None) -> None:
        """Button, device line and time estimate from the parameter node and the run state."""
        running = self._job is not None and not self._job.state.finished
        params = self._parameterNode
        self.ui.applyButton.text = _("Cancel") if running else _("Denoise")
        self.ui.applyButton.enabled = running or bool(params and params.inputVolume)
        self.ui.applyButton.toolTip = (_("Stop the run; nothing is created") if running
                                       else _("Adapt the model to the input and denoise it"))
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                       self.ui.advancedCollapsibleButton):
            widget.enabled = not running
        if params is None:
            return
        self.ui.noiseMapSelector.enabled = params.createNoiseMap and not running
        self.ui.targetNoiseSpinBox.enabled = params.useTargetNoise and not running
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription(params.device) + (
            "\n" + settings.autoBundlePick(self.logic.useCuda(params.device))
            if params.modelBundle == settings.AUTO_BUNDLE and self.logic.gpus is not None else "")
        self.ui.modelBundleComboBox.toolTip = settings.autoBundleHelp(self.logic.useCuda(params.device))
        self.ui.estimateLabel.text = self.logic.estimateText(params) if not running else ""
        # GPU detection and the speed probe run in the background: look again until they answered
        if (self.logic.gpus is None or self.logic.probing) and not self._recheckPending:
            self._recheckPending = True
            qt.QTimer.singleShot(300, self._recheck)

    def _recheck(self) -> None:
        self._recheckPending = False
        self.updateGui()

    def onStrengthPreset(self, level: str) -> None:
        if self._parameterNode:
            self._parameterNode.strength = settings.strengthPresets()[level]

    def _completedJob(self) -> Optional[DenoiseJob]:
        """The last run, if it completed and its output is still in the scene."""
        job = self._job
        if job is None or job.state is not RunState.COMPLETED or job.outputVolume is None:
            return None
        return job if job.outputVolume.GetScene() is slicer.mrmlScene else None

    def onStrengthChanged(self, value: float) -> None:
        job = self._completedJob()
        if (job is None or self._parameterNode is None or self._parameterNode.inputVolume is not job.inputVolume
                or value == job.strength):  # e.g. the strength a target noise level chose, shown
            return
        with slicer.util.tryWithErrorDisplay(_("Could not change the strength."), waitCursor=True):
            self.logic.applyStrength(job.inputVolume, job.outputVolume, job.noiseMapVolume, value)
            self.ui.statusLabel.text = _("Strength {value:.2f} applied to the last result (no new adaptation).").format(
                value=value)

    def onMeasureNoise(self) -> None:
        job = self._completedJob()
        if job is None:
            slicer.util.errorDisplay(_("Denoise a volume first: the noise check compares the input with its result."))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not measure the noise."), waitCursor=True):
            roiNode = self.ui.roiSelector.currentNode()
            report, tableNode = self.logic.regionNoiseTable(job.inputVolume, job.outputVolume, job.noiseMapVolume,
                                                            roiNode)
            if roiNode is None and report["boxes"]:  # show where it measured
                name = job.inputVolume.GetName() + " noise region"
                existing = slicer.mrmlScene.GetFirstNodeByName(name)
                regions.boxToRoi(report["boxes"][0], job.inputVolume,
                                 existing if existing is not None and existing.IsA("vtkMRMLMarkupsROINode") else None,
                                 name)
            self.ui.noiseReadingLabel.text = regions.describe(report)
            self.ui.noiseTableView.setMRMLTableNode(tableNode)
            self.ui.noiseTableView.show()

    def onCtPreset(self, preset: str) -> None:
        params = self._parameterNode
        inputVolume = params.inputVolume if params else None
        for node in (inputVolume, self._job.outputVolume if self._job else None):
            if node is not None:
                nodes.applyCtPreset(node, preset)

    def onShowResult(self) -> None:
        if self._job is not None and self._job.state is RunState.COMPLETED:
            self.logic.showResults(self._job)

    def onApplyButton(self) -> None:
        if self._job is not None and not self._job.state.finished:
            self._job.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start denoising.")):  # unexpected errors
            try:
                self.logic.ensureDependencies(askConfirmation=True)
                self._job = self.logic.processWithParameters(
                    self._parameterNode, waitForCompletion=False, onProgress=self.onProgress,
                    onFinished=self.onFinished)
            except (ValueError, dependencies.DependencyError) as exc:
                # Expected problems (bad input, missing package): say what to do, no traceback.
                slicer.util.errorDisplay(_("Could not start denoising.") + "\n\n" + str(exc))
                return
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting (the first run loads PyTorch, a few seconds)...")
            self._pollTimer.start()
        self.updateGui()

    def onPollTimer(self) -> None:
        try:
            if self._job is None or not self._job.poll():
                self._pollTimer.stop()
        except Exception as exc:  # noqa: BLE001 - a timer slot must not raise every 100 ms
            self._pollTimer.stop()
            logging.exception("SelfSupCTDenoise: following the run failed")
            if self._job is not None:
                self._job.cancel()
            slicer.util.errorDisplay(_("Denoising stopped: {error}").format(error=exc))
            self.updateGui()

    def onProgress(self, tracker) -> None:
        self.ui.progressBar.value = tracker.percent
        self.ui.statusLabel.text = tracker.statusText

    def onFinished(self, job: DenoiseJob) -> None:
        self._pollTimer.stop()
        self.ui.progressBar.hide()
        if job.state is RunState.COMPLETED:
            self.ui.statusLabel.text = self.logic.completedRunText(job)
            self.logic.showResults(job)
            if self._parameterNode is not None and job.config.get("target_noise") is not None:
                self._parameterNode.strength = job.strength  # the slider shows the strength chosen
        elif job.state is RunState.CANCELLED:
            self.ui.statusLabel.text = _("Cancelled; nothing was created.")
        else:
            self.ui.statusLabel.text = _("Failed; nothing was created.")
            slicer.util.errorDisplay(job.message, windowTitle=_("SelfSupCTDenoise"),
                                     detailedText="\n".join(job.runner.logTail) or None)
        self.updateGui()


class SelfSupCTDenoiseLogic(ScriptedLoadableModuleLogic):
    """Scriptable without the GUI::

        logic = SelfSupCTDenoiseLogic()
        job = logic.process(inputVolume, config={"steps": 200})  # waits; job.outputVolume, job.noiseMapVolume
    """

    SETTINGS_KEY = "SelfSupCTDenoise/MeasuredCosts"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.gpus = None  # None until detected
        # The last completed run: its full-strength result is kept (in memory, one run only) so that
        # `applyStrength` can re-blend without adapting again.
        self.lastJob: Optional[DenoiseJob] = None
        # This session's probes of the computer's speed, by (profile, "cpu" or "cuda"): the estimate
        # before the first run on this computer (`estimateText`).
        self.probes = {}
        self.bodyShares = {}  # the last volume's (settings.bodyShare), by content and bundle reach

    def getParameterNode(self):
        return SelfSupCTDenoiseParameterNode(super().getParameterNode())

    # -- devices, bundles, estimates -------------------------------------------------------------
    def detectGpusInBackground(self) -> None:
        import threading

        def detect():
            self.gpus = settings.detectGpus()
        threading.Thread(target=detect, daemon=True).start()

    def deviceDescription(self, device: str) -> str:
        return _("Detecting GPU...") if self.gpus is None else settings.describeDevice(device, self.gpus)

    def useCuda(self, device: str) -> bool:
        return settings.willUseCuda(device, self.gpus or [])

    def configFromParameters(self, params: SelfSupCTDenoiseParameterNode) -> dict:
        return settings.buildConfig(steps=params.steps, period=params.period, learningRate=params.learningRate,
                                    batchSize=params.batchSize, seed=params.seed, device=params.device,
                                    strength=params.strength, pretrainedOnly=params.pretrainedOnly,
                                    threads=int(params.threads), ctCheck=params.ctCheck, views=int(params.views),
                                    targetNoise=params.targetNoise if params.useTargetNoise else None)

    def estimateText(self, params: SelfSupCTDenoiseParameterNode) -> str:
        """The time a run would take: from this computer's earlier runs; before the first, from a probe
        of its speed (started here once per profile and device, in the background: "measuring" until
        it answers); the built-in table only where the probe failed."""
        volume = params.inputVolume
        if volume is None or volume.GetImageData() is None:
            return ""
        useCuda = self.useCuda(params.device)
        try:
            config = self.configFromParameters(params)
            bundle = settings.resolveBundle(params.modelBundle, useCuda)
        except ValueError as exc:
            return str(exc)
        manifest = settings.readManifest(bundle)
        profile = (manifest.get("profile") or {}).get("name", bundle.name)
        numNoiseModels = len((manifest.get("files") or {}).get("noise_models", [])) or 3
        costs = self.measuredCosts(profile, useCuda)
        if not costs:  # auto's device is known once the GPU detection answered
            probe = None if self.gpus is None and params.device == "auto" else self.speedProbe(
                profile, bundle, useCuda, params.threads)
            if probe is None or probe.running:
                return _("Estimated time: measuring this computer's speed…")
            costs = self.probedCosts(profile, useCuda)
        dims = volume.GetImageData().GetDimensions()
        estimate = settings.estimateTime(tuple(reversed(dims)), config, profile, useCuda, numNoiseModels, costs,
                                         self.bodyShare(volume, manifest))
        return _("Estimated time: {estimate}").format(estimate=estimate.describe())

    def bodyShare(self, volume, manifest: dict) -> float:
        """`settings.bodyShare` of the volume, computed once per volume content and bundle reach
        (~0.1 s: the estimate is refreshed on every change of a setting)."""
        key = (volume.GetID(), volume.GetImageData().GetMTime(), json.dumps(manifest.get("profile"), sort_keys=True))
        if key not in self.bodyShares:
            self.bodyShares = {key: settings.bodyShare(slicer.util.arrayFromVolume(volume), manifest)}
        return self.bodyShares[key]

    @property
    def probing(self) -> bool:
        return any(probe.running for probe in self.probes.values())

    def speedProbe(self, profile: str, bundle, useCuda: bool, threads: int = 0) -> SpeedProbe:
        """This session's probe of the computer's speed with `profile`'s bundle on the device, started
        (in the background) at the first call."""
        key = (profile, settings.deviceKey(useCuda))
        if key not in self.probes:
            self.probes[key] = SpeedProbe(self.createRunner(), bundle, key[1], threads)
        return self.probes[key]

    def probedCosts(self, profile: str, useCuda: bool) -> Optional[dict]:
        """The unit costs the probe measured (`settings.probedCosts`); None before it answered, or if it failed."""
        device = settings.deviceKey(useCuda)
        probe = self.probes.get((profile, device))
        return settings.probedCosts(probe.costs, profile, device) if probe is not None and probe.costs else None

    def _storedCosts(self) -> dict:
        try:
            stored = json.loads(qt.QSettings().value(self.SETTINGS_KEY, "{}") or "{}")
        except ValueError:
            return {}
        return stored if isinstance(stored, dict) else {}

    def measuredCosts(self, profile: str, useCuda: bool) -> Optional[dict]:
        return self._storedCosts().get(f"{profile}/{settings.deviceKey(useCuda)}")

    def recordCosts(self, job: DenoiseJob, profile: str, useCuda: bool) -> None:
        """Keep this computer's measured unit costs for the next estimates."""
        manifest = settings.readManifest(job.bundlePath) if job.bundlePath else {}
        numNoiseModels = len((manifest.get("files") or {}).get("noise_models", [])) or 3
        run = (job.result.info or {}).get("run") or {}
        costs = job.tracker.measuredCosts(job.geometry.arrayShape, job.config, numNoiseModels, job.result.elapsedS,
                                          run.get("body_fraction") or 1.0)
        stored = self._storedCosts()
        key = f"{profile}/{settings.deviceKey(useCuda)}"
        # what this run did not exercise (e.g. steps, after a pretrained-only run): the probe's, else the table's
        base = self.probedCosts(profile, useCuda) or settings.tableCosts(profile, settings.deviceKey(useCuda))
        stored[key] = {**base, **stored.get(key, {}), **costs, "probed": False}
        qt.QSettings().setValue(self.SETTINGS_KEY, json.dumps(stored))

    # -- running ---------------------------------------------------------------------------------
    def ensureDependencies(self, askConfirmation: bool = True) -> None:
        installed = dependencies.ensureDependencies(askConfirmation)
        if installed:
            logging.info("SelfSupCTDenoise installed: %s", ", ".join(installed))

    def createRunner(self) -> WorkerRunner:
        import shutil
        import sys

        pythonSlicer = shutil.which("PythonSlicer") or os.path.join(os.path.dirname(sys.executable), "PythonSlicer")
        return WorkerRunner(pythonExecutable=pythonSlicer, pythonPath=[os.path.dirname(__file__)])

    def process(self, inputVolume, outputVolume=None, noiseMapVolume=None, createNoiseMap: bool = True,
                config: Optional[dict] = None, bundlePath=None, waitForCompletion: bool = True,
                timeout: Optional[float] = None, onProgress=None, onFinished=None) -> DenoiseJob:
        """Denoise `inputVolume`. `config` takes `AdaptConfig` fields (`steps`, `lr`, `batch_size`, ...)
        or the panel's names (`learningRate`, `batchSize`, `pretrainedOnly`); the rest are defaults.
        Raises ValueError before starting if the input or parameters are unusable (an unknown key
        included). With `waitForCompletion` returns when done (check `job.state`, `job.message`)."""
        config = settings.configFromMapping(config or {})
        if self.gpus is None:
            self.gpus = settings.detectGpus()
        useCuda = self.useCuda(config["device"])
        bundle = Path(bundlePath) if bundlePath else settings.resolveBundle(settings.AUTO_BUNDLE, useCuda)
        profile = (settings.readManifest(bundle).get("profile") or {}).get("name", bundle.name)

        def finished(job):
            if job.state is RunState.COMPLETED:
                self.recordCosts(job, profile, useCuda)
                self.lastJob = job
            if onFinished is not None:
                onFinished(job)

        job = DenoiseJob(inputVolume, config, bundlePath=str(bundle), outputVolume=outputVolume,
                         noiseMapVolume=noiseMapVolume, createNoiseMap=createNoiseMap, runner=self.createRunner(),
                         forceCpu=config["device"] == "cpu", onProgress=onProgress, onFinished=finished)
        job.start()
        if waitForCompletion:
            job.waitForCompletion(timeout, processEvents=slicer.app.processEvents)
        return job

    def processWithParameters(self, params: SelfSupCTDenoiseParameterNode, **kwargs) -> DenoiseJob:
        config = self.configFromParameters(params)
        bundle = settings.resolveBundle(params.modelBundle, self.useCuda(params.device))
        if params.modelBundle == settings.AUTO_BUNDLE:
            logging.info("SelfSupCTDenoise: %s", settings.autoBundlePick(self.useCuda(params.device)))
        noiseMapVolume = params.noiseMapVolume if params.createNoiseMap else None
        return self.process(params.inputVolume, params.outputVolume, noiseMapVolume, params.createNoiseMap,
                            config=config, bundlePath=bundle, **kwargs)

    def applyStrength(self, inputNode, outputNode, noiseMapNode, strength: float) -> None:
        """Set the last run's outputs to `strength` at once, without adapting again: output = input -
        strength x (input - full result), noise map = input - output. Only the last completed run's
        full-strength result is kept; for an older output this raises ValueError (run Denoise again)."""
        job = self.lastJob
        if (job is None or job.fullStrength is None or job.outputVolume is not outputNode
                or job.inputVolume is not inputNode):
            raise ValueError(_("Only the last run's full result is kept: denoise this volume again to change "
                               "its strength."))
        reblend.applyStrength(inputNode, outputNode, noiseMapNode, job.fullStrength, strength)
        job.strength = float(strength)

    def regionNoiseTable(self, inputNode, outputNode, noiseMapNode=None, roiNode=None) -> tuple:
        """(report, table node "<input> noise regions"): noise mean/SD per region for input, denoised
        and noise map, the mean-HU shift and the method-noise reading. Regions: the ROI's RAS bounds
        in the input's voxels, or uniform soft-tissue regions found automatically (report["boxes"])."""
        return regions.regionNoiseTable(inputNode, outputNode, noiseMapNode, roiNode)

    def showResults(self, job: DenoiseJob) -> None:
        nodes.showThreeViews(job.inputVolume, job.outputVolume, job.noiseMapVolume)

    def completedRunText(self, job: DenoiseJob) -> str:
        """The status line of a completed run: time, device, the input's estimated noise, and whether
        the guard kept the pretrained model. Runs in Slicer's process: nothing here imports torch."""
        from SelfSupCTDenoiseLib.engine.noise_level import describe_run_estimate
        from SelfSupCTDenoiseLib.engine.target_noise import describe_target

        info = job.result.info
        run = info.get("run") or {}
        fellBack = (run.get("guard") or {}).get("fell_back")
        overridden = (run.get("ct_check") or {}).get("overridden")
        return (_("Done in {time} on {device}.").format(time=settings.formatDuration(job.result.elapsedS),
                                                        device=info.get("device", "?"))
                + " " + describe_run_estimate(run) + "."
                + (" " + describe_target(run.get("target_noise")) + "." if run.get("target_noise") else "")
                + (" " + _("Adaptation was rejected by the guard: the pretrained model's output is shown.")
                   if fellBack else "")
                + (" " + _("The CT check was off: the input does not look like CT in HU (recorded with the result).")
                   if overridden else ""))


class SelfSupCTDenoiseTest(ScriptedLoadableModuleTest):
    """Loads a small CT (the shipped sample, else a synthetic volume), runs a short adaptation with the
    real engine in its worker process, and checks the outputs. Needs PyTorch; without it only the
    node-level checks run (installing GBs inside a test harness is not acceptable)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_InputChecks()
        self.setUp()
        self.test_ShortAdaptation()

    def loadTestVolume(self):
        sampleDir = Path(__file__).parent / "Resources" / "Sample"
        # The low-dose sample (not the full-dose reference shipped beside it).
        samples = [p for p in sorted(sampleDir.glob("*.nrrd")) if "ndct" not in p.name] if sampleDir.is_dir() else []
        if samples:
            return slicer.util.loadVolume(str(samples[0]))
        import numpy as np

        rng = np.random.default_rng(0)
        z, y, x = np.indices((6, 96, 96))
        body = (y - 48) ** 2 + (x - 48) ** 2 < 40 ** 2
        insert = (x - 60) ** 2 + (y - 40) ** 2 < 64
        array = np.where(body, 40.0, -1000.0) + 200.0 * insert + rng.normal(0, 30, z.shape)
        ijkToRas = np.diag([-0.8, -0.8, 2.5, 1.0])
        return slicer.util.addVolumeFromArray(np.round(array).astype(np.int16), ijkToRas, name="synthetic LDCT")

    def test_InputChecks(self):
        self.delayDisplay("Checking input validation")
        label = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        with self.assertRaises(ValueError):
            nodes.validateInputVolume(label)
        volume = self.loadTestVolume()
        nodes.validateInputVolume(volume)
        self.assertEqual(nodes.outputNames(volume.GetName())[0], volume.GetName() + " denoised")
        self.delayDisplay("Input checks passed")

    def test_ShortAdaptation(self):
        problem = dependencies.torchMissing()
        if problem is not None:
            self.delayDisplay(f"{problem}: the run with the real engine was NOT tested.")
            logging.warning("SelfSupCTDenoise self-test: %s; the engine run was skipped.", problem)
            return
        volume = self.loadTestVolume()
        before = nodes.sceneSnapshot(slicer.mrmlScene)
        logic = SelfSupCTDenoiseLogic()
        job = logic.process(volume, config={"steps": 10, "period": 5, "batch_size": 4, "device": "cpu"},
                            timeout=600)
        self.assertEqual(job.state, RunState.COMPLETED, job.message)
        import numpy as np

        inputArray = slicer.util.arrayFromVolume(volume)
        denoised = slicer.util.arrayFromVolume(job.outputVolume)
        noise = slicer.util.arrayFromVolume(job.noiseMapVolume)
        self.assertEqual(denoised.shape, inputArray.shape)
        inputMatrix, outputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(inputMatrix)
        job.outputVolume.GetIJKToRASMatrix(outputMatrix)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVTKMatrix(inputMatrix),
                                       slicer.util.arrayFromVTKMatrix(outputMatrix)))
        self.assertLess(abs(float(denoised.mean()) - float(inputArray.mean())), 10.0)  # HU level kept
        self.assertLess(float(np.std(denoised[inputArray > -200])), float(np.std(inputArray[inputArray > -200])))
        self.assertTrue(np.isfinite(noise).all())
        self.assertGreaterEqual(len(nodes.sceneSnapshot(slicer.mrmlScene)) - len(before), 2)
        self.delayDisplay(f"Denoised in {job.result.elapsedS:.1f} s on {job.result.info.get('device')}")
