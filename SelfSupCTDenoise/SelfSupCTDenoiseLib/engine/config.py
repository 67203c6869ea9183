"""Network profiles and run parameters: plain frozen dataclasses, validated, JSON-friendly.

Everything the paper leaves open is a documented field here with the default this project uses.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, List, Mapping, Optional

from ..errors import InputError


@dataclass(frozen=True)
class NetworkProfile:
    """Sizes of the denoiser (RED-CNN) and of the noise models (U-Net).

    `paper` is the paper's RED-CNN (96 channels, 5x5, ~1.85 M parameters; ~1 TFLOP per 512x512 slice,
    meant for CUDA). `lite` is the CPU profile. `tiny` exists for tests only.
    """

    name: str
    redcnn_channels: int
    redcnn_kernel: int
    unet_channels: int
    unet_depth: int

    def denoiser_kwargs(self) -> Dict[str, int]:
        return {"channels": self.redcnn_channels, "kernel_size": self.redcnn_kernel}

    def noise_model_kwargs(self) -> Dict[str, int]:
        return {"base_channels": self.unet_channels, "depth": self.unet_depth}


def redcnn_receptive_radius(kernel_size: int) -> int:
    """An output pixel of RED-CNN depends on the input within this many pixels of it (5 valid
    convolutions reach k - 1 pixels further each, the transposed ones as far back): a crop this much
    wider than a region gives the region the whole image's output. Here, not in the network's module,
    so that the panel (no torch) sizes the body boxes as a run does."""
    return 5 * (kernel_size - 1)


PROFILES: Dict[str, NetworkProfile] = {
    "paper": NetworkProfile("paper", redcnn_channels=96, redcnn_kernel=5, unet_channels=32, unet_depth=3),
    "lite": NetworkProfile("lite", redcnn_channels=32, redcnn_kernel=5, unet_channels=16, unet_depth=2),
    "tiny": NetworkProfile("tiny", redcnn_channels=8, redcnn_kernel=3, unet_channels=8, unet_depth=2),
}

#: Pseudo-noise sources (how Z is made for X~ = Y~ + Z).
#: paper    - per-pixel random ensemble of the noise models' outputs, as in the paper
#: scaled   - `paper` times the amplitude calibrated on the training pairs (std ratio)
#: spectral - `paper` shaped per radial-frequency band so its NPS matches the training LDCT-NDCT NPS
#: gaussian - white Gaussian noise of `gaussian_sigma_hu` (paper's ablation)
#: hist     - noise drawn i.i.d. from the training LDCT-NDCT histogram (paper's ablation)
#: model+hist - one noise model's output plus histogram noise (paper's ablation)
#: synthetic - Gaussian noise shaped to the training LDCT-NDCT NPS: independent samples with the real
#:            texture (the noise models give E[Z|X], correlated with the noise already in X)
#: fitted   - Gaussian noise with the NPS measured on the input itself (noise_level.estimate_noise):
#:            follows a reconstruction kernel the models never saw
PSEUDO_NOISE = ("paper", "scaled", "spectral", "synthetic", "fitted", "gaussian", "hist", "model+hist")
#: bundle - pseudo-noise level as calibrated on the training pairs
#: input  - rescaled to the noise level estimated on the input volume itself (handles unseen doses)
#: local  - `input`, and in each place as much higher or lower as the input's noise is there
#:          (noise_level.local_level_map: CT noise rises behind bone and across wide body paths)
NOISE_LEVEL = ("bundle", "input", "local")
#: rescale  - the paper's random rescale in [0.5, 2] plus flips
#: rot90flip - rotations by 90 degrees and flips only (keeps the noise texture)
AUGMENT = ("rescale", "rot90flip")
DEVICES = ("auto", "cpu", "cuda")
#: How many views of each slice inference averages (engine/inference.py VIEWS): 1, or means of 2, 4 or 8
VIEW_COUNTS = (1, 2, 4, 8)


#: Field annotation -> accepted types and how a message names them (bool is not a number here).
_TYPES = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"),
          "bool": (bool, "true or false"), "str": (str, "a string")}


def _type_problems(config: Any) -> List[str]:
    """Fields whose value is not of the annotated type (`Optional[...]` also accepts None)."""
    problems = []
    for field in fields(config):
        annotation = str(field.type)
        optional = annotation.startswith("Optional[")
        kind = annotation[len("Optional["):-1] if optional else annotation
        value = getattr(config, field.name)
        if kind not in _TYPES or (optional and value is None):
            continue
        accepted, wording = _TYPES[kind]
        if not isinstance(value, accepted) or (isinstance(value, bool) and kind != "bool"):
            problems.append(f"{field.name} must be {wording}{' or null' if optional else ''} (got {value!r})")
        elif kind == "float" and not math.isfinite(value):  # inf, nan: from a flag, a JSON file or a manifest
            problems.append(f"{field.name} must be a finite number (got {value!r})")
    return problems


@dataclass(frozen=True)
class AdaptConfig:
    """Parameters of one denoising run (adaptation + inference)."""

    steps: int = 200                 # adaptation steps; 0 = pretrained model only
    period: int = 20                 # C: copy student into teacher every `period` steps and after the last
    lr: float = 1e-4                 # Adam learning rate of the student
    batch_size: int = 16             # patches per adaptation step
    patch_size: int = 64
    seed: int = 0
    teacher_update: bool = True      # False = the paper's "w/o theta update" ablation
    pseudo_noise: str = "fitted"
    noise_level: str = "local"
    augment: str = "rot90flip"
    gaussian_sigma_hu: float = 20.0  # for pseudo_noise="gaussian"
    adapt_slices: int = 32           # at most this many evenly spaced slices feed the patch pool
    guard: bool = True               # fall back to the pretrained output when adaptation goes wrong
    ct_check: bool = True            # refuse what surely is not CT in HU (ct_array); off: the provenance says what it overrode
    device: str = "auto"
    infer_batch: int = 0             # slices per inference batch; 0 = per device (1 on CPU, 4 on CUDA; halved on OOM)
    mixed_precision: bool = True     # autocast on CUDA (ignored on CPU)
    strength: float = 1.0            # output = X - strength * (X - f(X))
    target_noise: Optional[float] = None  # HU: the strength is chosen so that the result's noise SD in
    #                                       uniform soft tissue is this (engine/target_noise.py); not with `strength`
    body_only: bool = True           # denoise each slice's body box (engine/body.py); outside it, air and
    #                                  table as they are in the input. False = whole slices (slower)
    threads: int = 0                 # torch CPU threads for the run; 0 = OMP_NUM_THREADS if set, else every core
    views: int = 4                   # inference averages the network over this many turned/mirrored views of
    #                                  each slice (VIEW_COUNTS); the inference takes that many times as long

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if problems:  # e.g. "steps": "5" in a params.json: the range checks below need the right types
            raise InputError("Invalid parameters: " + "; ".join(problems) + ".")
        if self.steps < 0:
            problems.append("steps must be >= 0")
        if self.period < 1:
            problems.append("period (C) must be >= 1")
        if not self.lr > 0:
            problems.append("lr must be > 0")
        if self.threads < 0:
            problems.append("threads must be >= 0 (0 = all cores)")
        if self.batch_size < 1 or self.adapt_slices < 1:
            problems.append("batch_size and adapt_slices must be >= 1")
        if self.infer_batch < 0:
            problems.append("infer_batch must be >= 0 (0 = per device)")
        if self.patch_size < 16:
            problems.append("patch_size must be >= 16")
        if self.pseudo_noise not in PSEUDO_NOISE:
            problems.append(f"pseudo_noise must be one of {', '.join(PSEUDO_NOISE)}")
        if self.noise_level not in NOISE_LEVEL:
            problems.append(f"noise_level must be one of {', '.join(NOISE_LEVEL)}")
        if self.augment not in AUGMENT:
            problems.append(f"augment must be one of {', '.join(AUGMENT)}")
        if self.views not in VIEW_COUNTS:
            problems.append(f"views must be one of {', '.join(map(str, VIEW_COUNTS))}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {', '.join(DEVICES)}")
        if not 0.0 <= self.strength <= 1.0:
            problems.append("strength must be within [0, 1]")
        if self.target_noise is not None and self.target_noise < 0:
            problems.append("target_noise must be >= 0 HU")
        if self.target_noise is not None and self.strength != 1.0:
            problems.append("give either strength or target_noise, not both")
        if self.gaussian_sigma_hu <= 0:
            problems.append("gaussian_sigma_hu must be > 0")
        if problems:
            raise InputError("Invalid parameters: " + "; ".join(problems) + ".")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdaptConfig":
        """Build from a mapping, refusing unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"Unknown parameter(s): {', '.join(unknown)}.")
        return cls(**dict(data))

    def with_(self, **changes: Any) -> "AdaptConfig":
        return replace(self, **changes)
