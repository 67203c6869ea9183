"""What made an output: versions, bundle and checksum, device, seed, every parameter, timing.

One plain dict (`build_provenance`) travels three ways: as flat `SelfSupCTDenoise_<key>` string
fields in the NRRD header (`to_nrrd_fields`; ITK keeps custom NRRD fields through write and read,
NIfTI does not), as MRML node attributes (the same fields), and as a JSON sidecar `<output>.json`
next to CLI outputs (`write_sidecar` / `read_sidecar`). Nothing here imports torch: versions come
from the installed package metadata.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from . import __version__
from .errors import InputError

PathLike = Union[str, os.PathLike]

FORMAT = "SelfSupCTDenoise provenance"
FORMAT_VERSION = 1
#: Prefix of the NRRD header fields and MRML attributes; nested keys are joined with ".".
FIELD_PREFIX = "SelfSupCTDenoise_"
SIDECAR_SUFFIX = ".json"


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


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.splitlines())  # header fields are one line each
    return json.dumps(value, separators=(",", ":"), default=str)


def to_nrrd_fields(provenance: Mapping[str, Any], prefix: str = FIELD_PREFIX) -> Dict[str, str]:
    """Flat string fields, e.g. SelfSupCTDenoise_parameters.steps = "200", for
    `image.SetMetaData(key, value)` or `node.SetAttribute(key, value)`. Lists are JSON text."""
    fields: Dict[str, str] = {}

    def walk(mapping: Mapping[str, Any], path: str) -> None:
        for key, value in mapping.items():
            if isinstance(value, Mapping) and value:
                walk(value, f"{path}{key}.")
            else:
                fields[f"{prefix}{path}{key}"] = _to_text(value)

    walk(provenance, "")
    return fields


def from_nrrd_fields(fields: Mapping[str, str], prefix: str = FIELD_PREFIX) -> Dict[str, Any]:
    """Rebuild the nested record from fields (other keys are ignored). Values that read as JSON
    (numbers, true/false/null, lists) come back typed, the rest as strings."""
    record: Dict[str, Any] = {}
    for key, text in fields.items():
        if not key.startswith(prefix):
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, str):
            value = text
        node = record
        *parents, leaf = key[len(prefix):].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return record


def set_image_fields(image: Any, provenance: Mapping[str, Any]) -> None:
    """Put the fields on a SimpleITK image, to be written with it (NRRD keeps them)."""
    for key, value in to_nrrd_fields(provenance).items():
        image.SetMetaData(key, value)


def sidecar_path(output_path: PathLike) -> Path:
    """`<output>.json`: out.nrrd -> out.nrrd.json; a DICOM folder out/ -> out.json."""
    return Path(str(Path(output_path)) + SIDECAR_SUFFIX)


def sidecar_text(provenance: Mapping[str, Any]) -> str:
    return json.dumps(provenance, indent=2, default=str) + "\n"


def write_sidecar(output_path: PathLike, provenance: Mapping[str, Any]) -> Path:
    """Write `<output>.json` atomically (io.OutputSet: usual permissions); returns its path."""
    from .io import OutputSet

    path = sidecar_path(output_path)
    with OutputSet() as outputs:
        outputs.add_text(path, sidecar_text(provenance))
        outputs.commit()
    return path


def read_sidecar(path: PathLike) -> Dict[str, Any]:
    """Read a sidecar, given its own path or the output's path."""
    path = Path(path)
    if not (path.suffix == SIDECAR_SUFFIX and path.is_file()):
        path = sidecar_path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read the provenance file {path}: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"{path} is not a SelfSupCTDenoise provenance file.")
    return record
