"""What made an output: versions, bundle and checksum, device, seed, every parameter, timing.

One plain dict (`build_provenance`), made by every run; `files/provenance_io.py` writes and reads it
(NRRD header fields, MRML node attributes, JSON sidecar). `files.denoise_file` adds what the output was
made from, `input_identity` (files/identity.py), which the resume rule of a batch compares. Nothing here imports torch: versions
come from the installed package metadata.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from .. import __version__

PathLike = Union[str, os.PathLike]

FORMAT = "SelfSupCTDenoise provenance"
FORMAT_VERSION = 1


def _installed_version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> Dict[str, Optional[str]]:
    """Versions of the project and of the libraries that shape the numbers (None if not installed)."""
    versions = {
        "selfsupctdenoise": __version__,
        "python": platform.python_version(),
        "torch": _installed_version("torch"),
        "numpy": _installed_version("numpy"),
        "SimpleITK": _installed_version("SimpleITK"),
        "platform": platform.platform(terse=True),
    }
    torch = sys.modules.get("torch")  # the CUDA build only when torch is already loaded
    if torch is not None and getattr(torch, "version", None) is not None:
        versions["torch_cuda"] = getattr(torch.version, "cuda", None)
    return versions


def _field(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def build_provenance(*, parameters: Any, bundle: Any = None, device: Optional[str] = None,
                     seed: Optional[int] = None, elapsed_s: Optional[float] = None,
                     input_path: Optional[PathLike] = None, timestamp: Optional[str] = None,
                     run: Optional[Mapping[str, Any]] = None, threads: Optional[int] = None) -> Dict[str, Any]:
    """The provenance record of one output.

    parameters: an AdaptConfig (anything with `to_dict`) or a mapping: every run parameter.
    bundle: a `bundle.Bundle` or a mapping with "name", "sha256" (and optionally "profile").
    device: as the run described it, e.g. "cpu (2 threads)" or "cuda (NVIDIA H100, 79.1 GiB)".
    seed: defaults to parameters["seed"].
    input_path: only the file (or DICOM folder) name is kept, not the folders above it.
    run: optional results worth keeping (adaptation loss, guard decision, quality numbers...).
    threads: the CPU thread count the run used (parameters["threads"] may be 0 = all cores); with
        the seed, device and torch build it decides whether a rerun gives the same output.
    """
    params = dict(parameters.to_dict() if hasattr(parameters, "to_dict") else parameters)
    profile = _field(bundle, "profile")
    record: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "software": "SelfSupCTDenoise",
        "versions": software_versions(),
        "bundle": {"name": _field(bundle, "name"), "sha256": _field(bundle, "sha256"),
                   "profile": getattr(profile, "name", profile)},
        "device": device,
        "seed": params.get("seed") if seed is None else int(seed),
        "threads": threads,
        "parameters": params,
        "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 3),
        "timestamp": timestamp or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": Path(input_path).name if input_path is not None else None,
        "note": "research use, not for diagnosis",
    }
    if run:
        record["run"] = dict(run)
    return record


def applied_strength(record: Mapping[str, Any]) -> Optional[float]:
    """The strength of an output's voxels: the one its target noise level chose
    (run["target_noise"], engine/target_noise.py), else the one asked for (parameters)."""
    parameters = record.get("parameters") or {}
    if parameters.get("target_noise") is not None:
        return ((record.get("run") or {}).get("target_noise") or {}).get("strength")
    return parameters.get("strength")
