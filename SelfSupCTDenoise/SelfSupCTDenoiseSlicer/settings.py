"""From panel values to an engine run: bundles, device detection, the engine config, time estimates.

Plain Python (no Slicer, no torch): the module's parameter node is converted to keyword values and
handed to `buildConfig`, a script's `config` dict to `configFromMapping`; the engine's own
`AdaptConfig` validates them.
"""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

DEVICE_CHOICES = ("auto", "cuda", "cpu")
AUTO_BUNDLE = "auto"
#: The panel's parameter names that differ from the engine's `AdaptConfig` fields.
PANEL_NAMES = {"learningRate": "lr", "batchSize": "batch_size", "ctCheck": "ct_check", "targetNoise": "target_noise"}
#: Panel switch without an engine field: skip the adaptation (steps 0).
PRETRAINED_ONLY = "pretrainedOnly"


def strengthPresets() -> Dict[str, float]:
    """Named strengths (low/medium/high, like vendors' DLIR levels), as the engine defines them."""
    from SelfSupCTDenoiseLib.engine.strength import STRENGTH_LEVELS

    return dict(STRENGTH_LEVELS)


def modelsDir() -> Path:
    from SelfSupCTDenoiseLib.engine.bundle import models_dir

    return models_dir()


def listBundles(folder: Optional[Path] = None) -> Dict[str, Path]:
    """Bundle folders (holding a manifest.json) by name, sorted."""
    folder = Path(folder) if folder is not None else modelsDir()
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "manifest.json").is_file()}


def bundleChoices(folder: Optional[Path] = None) -> List[str]:
    return [AUTO_BUNDLE] + list(listBundles(folder))


def readManifest(bundlePath: Path) -> Dict[str, Any]:
    """The bundle's manifest (no checksum verification: the worker does that before use)."""
    try:
        return json.loads((Path(bundlePath) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resolveBundle(choice: str, useCuda: bool, customPath: str = "", folder: Optional[Path] = None) -> Path:
    """The bundle folder to use; a custom folder wins over the choice. Raises ValueError if missing."""
    if customPath and str(customPath) not in (".", ""):
        path = Path(customPath)
        if not (path / "manifest.json").is_file():
            raise ValueError(f"'{path}' is not a model bundle folder (it has no manifest.json).")
        return path
    bundles = listBundles(folder)
    if choice == AUTO_BUNDLE:
        from SelfSupCTDenoiseLib.engine.bundle import default_bundle_for_device

        # The command line's choice: 'lite', unless a bundle was measured better on this device.
        path = default_bundle_for_device(deviceKey(useCuda), folder or modelsDir())
        if path.name in bundles:
            return bundles[path.name]
        if bundles:
            return next(iter(bundles.values()))
        raise ValueError(f"No model bundle found in {folder or modelsDir()}. Reinstall the extension.")
    if choice not in bundles:
        raise ValueError(f"Model bundle '{choice}' not found in {folder or modelsDir()}.")
    return bundles[choice]


def autoBundlePick(useCuda: bool, folder: Optional[Path] = None) -> str:
    """What 'auto' picks for the chosen device, and why, in one sentence (the panel's Detected line
    and the log)."""
    device = deviceKey(useCuda)
    try:
        picked = resolveBundle(AUTO_BUNDLE, useCuda, folder=folder).name
    except ValueError as exc:
        return str(exc)
    if picked == "lite":
        why = f"no bundle's manifest lists '{device}' under auto_on (measured at least as good as lite there)"
    else:
        why = f"its manifest lists '{device}' under auto_on: it was measured at least as good as lite there"
    return f"Model auto on {'CUDA' if useCuda else 'the CPU'} picks '{picked}': {why}."


def autoBundleHelp(useCuda: bool, folder: Optional[Path] = None) -> str:
    """What 'auto' means, and what it picks on this computer for the chosen device."""
    return ("auto: 'lite', the best measured prior; on a GPU a bigger bundle only where it was measured "
            "at least as good there. " + autoBundlePick(useCuda, folder))


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memoryMiB: int

    def describe(self) -> str:
        return f"{self.name}, {self.memoryMiB / 1024:.0f} GB"


def detectGpus(timeout: float = 3.0) -> List[GpuInfo]:
    """NVIDIA GPUs reported by nvidia-smi, without importing torch (empty if there is none)."""
    from .runner import hiddenConsoleArgs

    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        output = subprocess.run([executable, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=timeout, check=True,
                                **hiddenConsoleArgs()).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in output.splitlines():
        name, _, memory = line.rpartition(",")
        try:
            gpus.append(GpuInfo(name.strip(), int(float(memory))))
        except ValueError:
            continue
    return gpus


def willUseCuda(device: str, gpus: Sequence[GpuInfo]) -> bool:
    return device == "cuda" or (device == "auto" and bool(gpus))


def describeDevice(device: str, gpus: Sequence[GpuInfo]) -> str:
    if device == "cpu":
        return f"CPU ({os.cpu_count()} cores), chosen"
    if gpus:
        return f"CUDA GPU: {gpus[0].describe()}" + (f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else "")
    if device == "cuda":
        return "CUDA requested, but no NVIDIA GPU was detected: the run will fail; choose auto or CPU"
    return f"No CUDA GPU detected: CPU ({os.cpu_count()} cores)"


#: The panel's target noise level when first checked (HU).
DEFAULT_TARGET_NOISE_HU = 10.0


def buildConfig(*, steps: int, period: int, learningRate: float, batchSize: int, seed: int, device: str,
                strength: float, pretrainedOnly: bool = False, targetNoise: Optional[float] = None,
                **extra: Any) -> Dict[str, Any]:
    """Engine config dict from panel values, validated by `AdaptConfig` (InputError on bad values).
    With `targetNoise` (HU) the strength is left out: the target chooses it after the run."""
    level = dict(strength=float(strength)) if targetNoise is None else dict(targetNoise=float(targetNoise))
    return configFromMapping(dict(steps=int(steps), period=int(period), learningRate=float(learningRate),
                                  batchSize=int(batchSize), seed=int(seed), device=device,
                                  pretrainedOnly=pretrainedOnly, **level, **extra))


def configFromMapping(values: Dict[str, Any]) -> Dict[str, Any]:
    """Engine config dict (every `AdaptConfig` field) from a mapping in the engine's names (`lr`,
    `batch_size`, ...), the panel's (`learningRate`, `batchSize`, `pretrainedOnly`) or both. Raises
    InputError for an unknown key, for one parameter given under both names, or for a bad value."""
    from dataclasses import fields

    from SelfSupCTDenoiseLib.engine.config import AdaptConfig
    from SelfSupCTDenoiseLib.errors import InputError

    engine: Dict[str, Any] = {}
    for key, value in values.items():
        name = PANEL_NAMES.get(key, key)
        if name in engine:
            raise InputError(f"'{key}' and '{name}' are the same parameter: give it once.")
        engine[name] = value
    pretrainedOnly = engine.pop(PRETRAINED_ONLY, False)
    known = [f.name for f in fields(AdaptConfig)]
    unknown = sorted(set(engine) - set(known))
    if unknown:
        raise InputError(f"Unknown parameter(s): {', '.join(unknown)}. Use AdaptConfig's fields "
                         f"({', '.join(known)}) or the panel's names ({', '.join(PANEL_NAMES)}, {PRETRAINED_ONLY}).")
    if pretrainedOnly:
        engine["steps"] = 0
    return AdaptConfig.from_dict(engine).to_dict()


#: Seconds per unit of work on 2 CPU cores (torch 2.13): one adaptation step of 16 patches of 64x64
#: (teacher refresh and pseudo-noise included), one 512x512 slice through the denoiser (its share of
#: writing included), one 512x512 slice through one noise model, and start-up (interpreter, torch,
#: bundle, files, noise estimate). The lite CPU row is docs/SPEED.md's whole runs on 512x512x{16,100,300}
#: (`benchmarks/speed.py`, 2026-12-01, load below 2): 45, 68 and 129 s, which this table gives within
#: 11%; the noise-model cost is part 2 of that report (only the model-based pseudo-noise kinds use
#: it). The paper CPU row is the lite row times the paper/lite ratio measured side by side there
#: (x7.0 per step, x7.8 per slice). CUDA rows are rough guesses until measured on a GPU. Another
#: 2-core CPU took 10x as long (with other jobs on its cores), so the panel shows them only where the
#: worker's probe of this computer failed; the probe's costs (`probedCosts`), then runs on the user's computer, replace
#: them (`estimateTime`'s `costs`).
DEFAULT_COSTS = {
    ("lite", "cpu"): {"stepS": 0.205, "sliceS": 0.27, "noiseSliceS": 0.08, "startupS": 3.0, "measured": True},
    ("paper", "cpu"): {"stepS": 1.44, "sliceS": 2.1, "noiseSliceS": 0.3, "startupS": 3.0, "measured": False},
    ("tiny", "cpu"): {"stepS": 0.01, "sliceS": 0.02, "noiseSliceS": 0.01, "startupS": 3.0, "measured": False},
    ("lite", "cuda"): {"stepS": 0.02, "sliceS": 0.01, "noiseSliceS": 0.005, "startupS": 8.0, "measured": False},
    ("paper", "cuda"): {"stepS": 0.04, "sliceS": 0.03, "noiseSliceS": 0.01, "startupS": 8.0, "measured": False},
    ("tiny", "cuda"): {"stepS": 0.01, "sliceS": 0.005, "noiseSliceS": 0.005, "startupS": 8.0, "measured": False},
}
#: Pseudo-noise kinds that run the noise models (as `SelfSupCTDenoiseLib.engine.pseudo.MODEL_KINDS`, which
#: imports torch and so cannot be imported here).
MODEL_NOISE_KINDS = ("paper", "scaled", "spectral", "model+hist")
GUARD_SLICES = 6  # the engine's guard runs both models over this many slices; the adapted model's are reused


@dataclass
class TimeEstimate:
    seconds: float
    basis: str  # where the unit costs come from, shown to the user

    def describe(self) -> str:
        return f"about {formatDuration(self.seconds)} ({self.basis})"


def deviceKey(useCuda: bool) -> str:
    """The device name of the cost tables, the bundles' `auto_on` and the probes: "cuda" or "cpu"."""
    return "cuda" if useCuda else "cpu"


def tableCosts(profile: str, deviceKey: str) -> Dict[str, Any]:
    """The built-in unit costs of a profile ("lite", ...) on "cpu" or "cuda" (lite's for an unknown profile)."""
    return DEFAULT_COSTS.get((profile, deviceKey)) or DEFAULT_COSTS[("lite", deviceKey)]


def probedCosts(probed: Dict[str, float], profile: str, deviceKey: str) -> Dict[str, Any]:
    """Unit costs from the worker's probe (stepS, sliceS, startupS), marked as probed; the noise
    models, which it does not time, are the table's cost scaled by the probed slice's ratio to the table's."""
    table = tableCosts(profile, deviceKey)
    return dict(probed, noiseSliceS=table["noiseSliceS"] * probed["sliceS"] / table["sliceS"], probed=True)


def inferredScale(config: Dict[str, Any], pixelScale: float, bodyShare: float) -> float:
    """Whole 512x512 slices' worth of network forwards per slice of a run of `config`: its body share
    (unless whole slices are asked for) times the views it averages."""
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig

    return pixelScale * (bodyShare if config.get("body_only", True) else 1.0) * int(config.get("views", AdaptConfig.views))


def estimateTime(arrayShape: Sequence[int], config: Dict[str, Any], profile: str, useCuda: bool,
                 numNoiseModels: int = 3, costs: Optional[Dict[str, Any]] = None,
                 bodyShare: float = 1.0) -> TimeEstimate:
    """Click-to-result time for a (slices, rows, columns) volume. `costs` (measured on this computer
    by earlier runs, or by its probe: `probedCosts`) overrides the built-in table. `bodyShare`: the
    share of the slices' pixels in their body boxes (`engine.body.body_share`), which is all a run
    denoises unless the config asks for whole slices."""
    basis = "probed on this computer" if costs and costs.get("probed") else "measured on this computer"
    if not costs:
        costs = tableCosts(profile, deviceKey(useCuda))
        basis = ("measured on another 2-core CPU; this one may differ several-fold until a first run here"
                 if costs.get("measured") else "rough: not measured on this kind of device yet")
    slices, rows, columns = arrayShape
    pixelScale = rows * columns / 512.0 ** 2
    denoisedScale = inferredScale(config, pixelScale, bodyShare)
    steps = int(config.get("steps", 0))
    seconds = costs["startupS"] + slices * costs["sliceS"] * denoisedScale
    if steps > 0:
        patchScale = config.get("batch_size", 16) / 16.0 * (config.get("patch_size", 64) / 64.0) ** 2
        seconds += steps * costs["stepS"] * patchScale
        poolSlices = min(slices, int(config.get("adapt_slices", 32)))
        if config.get("pseudo_noise") in MODEL_NOISE_KINDS:
            seconds += numNoiseModels * poolSlices * costs["noiseSliceS"] * pixelScale
        if config.get("guard", True):
            seconds += min(slices, GUARD_SLICES) * costs["sliceS"] * denoisedScale
    return TimeEstimate(seconds, basis)


def bodyShare(array, manifest: Dict[str, Any]) -> float:
    """The share of a (slices, rows, columns) HU array that a run with this bundle denoises: its
    slices' body boxes, widened by the bundle's network reach (`engine.body.body_share`); 1 where the
    manifest does not say that reach (the run then denoises whole slices, or refuses the bundle)."""
    from SelfSupCTDenoiseLib.engine.body import body_share
    from SelfSupCTDenoiseLib.engine.config import redcnn_receptive_radius

    kernel = (manifest.get("profile") or {}).get("redcnn_kernel")
    if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1:
        return 1.0
    return body_share(array, redcnn_receptive_radius(kernel))


def formatDuration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
