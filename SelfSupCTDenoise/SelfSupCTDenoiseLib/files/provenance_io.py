"""Where the provenance record (`engine.provenance.build_provenance`) travels: as flat
`SelfSupCTDenoise_<key>` string fields in the NRRD header (`to_nrrd_fields`; ITK keeps custom NRRD
fields through write and read, NIfTI does not), as MRML node attributes (the same fields), and as a
JSON sidecar `<output>.json` next to CLI outputs (`write_sidecar` / `read_sidecar`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping

from ..engine.provenance import FORMAT, PathLike
from ..errors import InputError

#: Prefix of the NRRD header fields and MRML attributes; nested keys are joined with ".".
FIELD_PREFIX = "SelfSupCTDenoise_"
SIDECAR_SUFFIX = ".json"


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
    """Write `<output>.json` atomically (volumes.OutputSet: usual permissions); returns its path."""
    from .volumes import OutputSet

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
