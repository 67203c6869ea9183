"""One denoising run seen from the scene: input node -> worker process -> output nodes.

The scene is touched only when the worker has finished and its result file has been read: a
cancelled or failed run leaves the scene exactly as it was. The worker always runs at strength 1
and hands that result back unrounded (float32); the job keeps it (`fullStrength`) and blends the
requested strength on this side exactly as the command line does, so the strength can be changed
after the run without adapting again (see strength.py). All methods run on the main thread;
`poll()` is called from a GUI timer (or by `waitForCompletion()` in scripts).
"""

import logging
import time
from typing import Any, Callable, Dict, Optional

import slicer

from . import nodes, strength
from .runner import RunResult, RunState, WorkerRunner
from .status import ProgressTracker

logger = logging.getLogger(__name__)


class DenoiseJob:
    """Args:
        inputVolume: CT volume node (checked with `nodes.validateInputVolume`).
        config: engine config dict (see `settings.buildConfig`).
        bundlePath: model bundle folder (None: the engine's default).
        outputVolume: node to fill with the result; None creates "<input> denoised".
        noiseMapVolume: node for the noise map; None with `createNoiseMap` creates "<input> noise map".
        runner: the `WorkerRunner` to use (tests inject one running a fake worker).
        forceCpu: hide every GPU from the worker.
        onProgress: called with the `ProgressTracker` after each batch of progress events.
        onFinished: called with this job once it has finished, whatever the outcome.
    """

    def __init__(self, inputVolume, config: Dict[str, Any], bundlePath=None, outputVolume=None,
                 noiseMapVolume=None, createNoiseMap: bool = True, runner: Optional[WorkerRunner] = None,
                 forceCpu: bool = False, onProgress: Optional[Callable] = None,
                 onFinished: Optional[Callable] = None):
        self.inputVolume = inputVolume
        self.config = dict(config)
        self.bundlePath = bundlePath
        self.requestedOutput = outputVolume
        self.requestedNoiseMap = noiseMapVolume
        self.wantNoiseMap = bool(createNoiseMap or noiseMapVolume is not None)
        self.runner = runner or WorkerRunner()
        self.forceCpu = forceCpu
        self.onProgress, self.onFinished = onProgress, onFinished
        self.state = RunState.IDLE
        self.result: Optional[RunResult] = None
        self.message = ""
        self.outputVolume = None
        self.noiseMapVolume = None
        self.noiseHalfWindow = 0.0
        self.strength = float(self.config.get("strength", 1.0))
        self.fullStrength = None  # float32 voxel array (K, J, I) of the strength-1 result, once completed
        self.tracker: Optional[ProgressTracker] = None
        self.geometry: Optional[nodes.VolumeGeometry] = None
        self._scene = None

    # -- starting --------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the inputs, write the input file and launch the worker. Raises ValueError (with a
        message for the user) before anything starts; the scene is not modified."""
        nodes.validateInputVolume(self.inputVolume, bool(self.config.get("ct_check", True)))
        self._scene = self.inputVolume.GetScene()
        if self._scene is None:
            raise nodes.InputVolumeError("The input volume is not in a scene.")
        for node in (self.requestedOutput, self.requestedNoiseMap):
            if node is not None and node is self.inputVolume:
                raise nodes.InputVolumeError("The output is the input volume: choose another output or "
                                             "'Create new volume' (the input is never overwritten).")
        if (self.requestedOutput is not None and self.requestedOutput is self.requestedNoiseMap):
            raise nodes.InputVolumeError("The denoised volume and the noise map must be different nodes.")
        self.geometry = nodes.captureGeometry(self.inputVolume)
        self.tracker = ProgressTracker(self.geometry.arrayShape[0], int(self.config.get("steps", 0)))
        try:
            self.runner.createWorkDir()
            nodes.writeVolumeFile(self.inputVolume, self.runner.inputPath)
            # Strength 1 in the worker, unrounded: rounding before the blend would give other voxels
            # than the command line. The noise map is made here from the blended output, and the
            # strength for a target noise level chosen here, on the same voxels as the command line.
            worker = {key: value for key, value in self.config.items() if key != "target_noise"}
            self.runner.start(dict(worker, strength=1.0), self.bundlePath, noiseMap=False,
                              forceCpu=self.forceCpu, loadResults=self._readResults, outputDtype="float32")
        except BaseException:
            self.runner.cleanup()
            raise
        self.state = RunState.RUNNING
        logger.info("SelfSupCTDenoise started on '%s' (worker pid %s, config %s, bundle %s)",
                    self.inputVolume.GetName(), self.runner.pid, self.config, self.bundlePath)

    # -- following -------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Handle what the worker said since the last call; import the result when it is done.
        Returns True while the job is still running."""
        if self.state.finished or self.state is RunState.IDLE:
            return False
        runnerState = self.runner.state
        sawProgress = False
        for message in self.runner.poll():
            if message["event"] == "progress":
                self.tracker.update(message["progressEvent"], message.get("receivedAt"))
                sawProgress = True
        if sawProgress and self.onProgress is not None:
            self.onProgress(self.tracker)
        if not runnerState.finished:
            return True
        self._finish(self.runner.result)
        return False

    def cancel(self) -> bool:
        """Stop the worker; no node is created or changed. Returns False if not running."""
        if self.state.finished or self.state is RunState.IDLE:
            return False
        self.runner.cancel()
        # Decided here, whatever the worker does next: a cancelled job never imports.
        self._finish(RunResult(RunState.CANCELLED, message="Cancelled by the user; nothing was created.",
                               elapsedS=self.tracker.elapsed if self.tracker else 0.0))
        return True

    def waitForCompletion(self, timeout: Optional[float] = None, processEvents: Optional[Callable] = None,
                          interval: float = 0.05) -> RunState:
        """Poll until finished (scripts, tests). `processEvents` (e.g. slicer.app.processEvents) keeps a
        GUI alive meanwhile. On timeout the run is cancelled and TimeoutError raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"Denoising did not finish within {timeout} s; it was cancelled.")
            if processEvents is not None:
                processEvents()
            time.sleep(interval)
        return self.state

    # -- finishing -------------------------------------------------------------------------------
    def _finish(self, result: RunResult) -> None:
        if result.state is RunState.COMPLETED:
            try:
                self._importResults(result.info)
            except Exception as exc:  # noqa: BLE001 - reported to the user, never half-imported
                logger.exception("Importing the SelfSupCTDenoise result failed")
                result = RunResult(RunState.FAILED, info=result.info, errorKind="import",
                                   message=f"Could not create the output volumes: {exc}", elapsedS=result.elapsedS)
        self.result = result
        self.state = result.state
        self.message = result.message
        self.runner.cleanup(wait=False)  # never blocks: a cancelled tree is removed in the background
        if result.state is RunState.COMPLETED:
            logger.info("SelfSupCTDenoise finished in %.1f s: %s", self.tracker.elapsed if self.tracker else 0.0,
                        result.info)
        elif result.state is RunState.FAILED:
            logger.error("SelfSupCTDenoise failed (%s): %s", result.errorKind, result.message)
            for line in self.runner.logTail:
                logger.info("[worker] %s", line)
        if self.onFinished is not None:
            self.onFinished(self)

    def _readResults(self, runner: WorkerRunner):
        """Runs in the runner's reader thread: decompressing the result file can take seconds for a
        large volume, and must not freeze the GUI. Touches no node."""
        return nodes.readVolumeArray(runner.outputPath)

    def _importResults(self, info: Dict[str, Any]) -> None:
        if self.inputVolume.GetScene() is not self._scene:
            raise ValueError("the input volume was removed from the scene during the run")
        if self.tracker is not None:
            self.tracker.setImporting()
            if self.onProgress is not None:
                self.onProgress(self.tracker)
        # Everything is read (in the reader thread) before the scene is touched.
        full = self.runner.loadedResults
        if full is None:
            full = self._readResults(self.runner)
        if tuple(full.shape) != self.geometry.arrayShape:
            raise ValueError(f"the denoised volume has shape {full.shape}, the input {self.geometry.arrayShape}")
        inputArray = slicer.util.arrayFromVolume(self.inputVolume)
        # The worker ran at strength 1: the provenance records the strength of the voxels shown, or
        # the target noise level and the strength it chose, as the command line does.
        parameters = dict(info.get("parameters") or {}, strength=self.strength)
        target = self.config.get("target_noise")
        if target is not None:
            run = dict(info.get("run") or {})
            run["target_noise"] = strength.targetStrength(inputArray, full, target, run)
            self.strength = run["target_noise"]["strength"]
            logger.info("SelfSupCTDenoise: %s", strength.describeTarget(run["target_noise"]))
            info = dict(info, run=run)
            parameters.update(strength=1.0, target_noise=target)
        info = dict(info, parameters=parameters)
        denoised, noise = strength.blendArrays(inputArray, full, self.strength)
        if not self.wantNoiseMap:
            noise = None
        denoisedName, noiseName = nodes.outputNames(self.inputVolume.GetName())
        created = []
        try:
            self._scene.StartState(self._scene.BatchProcessState)  # one GUI refresh for all changes
            try:
                output = nodes.createOutputVolume(self._scene, denoisedName, denoised, self.geometry,
                                                  self.requestedOutput)
                if output is not self.requestedOutput:
                    created.append(output)
                nodes.copyWindowLevel(self.inputVolume, output)
                nodes.setProvenance(output, "denoised", self.inputVolume, info)
                nodes.placeNextTo(output, self.inputVolume)
                noiseNode = None
                if noise is not None:
                    noiseNode = nodes.createOutputVolume(self._scene, noiseName, noise, self.geometry,
                                                         self.requestedNoiseMap)
                    if noiseNode is not self.requestedNoiseMap:
                        created.append(noiseNode)
                    self.noiseHalfWindow = nodes.noiseMapHalfWindow(noise)
                    nodes.setNoiseMapDisplay(noiseNode, self.noiseHalfWindow)
                    nodes.setProvenance(noiseNode, "noise map", self.inputVolume, info)
                    nodes.placeNextTo(noiseNode, self.inputVolume)
            finally:
                self._scene.EndState(self._scene.BatchProcessState)
        except BaseException:
            for node in created:
                self._scene.RemoveNode(node)
            raise
        self.outputVolume, self.noiseMapVolume = output, noiseNode
        self.fullStrength = full
