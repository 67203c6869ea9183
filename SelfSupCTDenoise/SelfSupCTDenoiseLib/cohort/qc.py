"""The QC record of one cohort output: the engine's trust numbers (trust.py: noise SD in uniform
tissue before and after, mean-HU shift, method noise), what the run recorded in its sidecar (input
noise estimate and texture, guard, time, device) and two image strips of the middle slice, LDCT |
denoised | noise map in the soft-tissue window: a thumbnail for the report and a full-size one.

Written next to the outputs, in OUTDIR/qc/: `<output>.png` (full size), `<output>_thumb.png` and
`<output>.json` last (it marks the QC complete; it holds the SHA-256 of the output's sidecar, so a
redone output gets a new QC).
"""

from __future__ import annotations

import json
import numbers
import os
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..bench.figures import SOFT_TISSUE
from ..engine.bundle import sha256_file
from ..engine.provenance import applied_strength
from ..errors import InputError
from ..files.names import too_long
from ..files.provenance_io import read_sidecar, sidecar_path

QC_FOLDER = "qc"
#: Noise maps are shown from -NOISE_RANGE_HU (blue) through 0 (white) to +NOISE_RANGE_HU (red), as in
#: the demo's side-by-side figure (figures.side_by_side).
NOISE_RANGE_HU = 100.0
#: Height in pixels of each panel of the thumbnail strip.
THUMB_PX = 96
GAP_PX = 2


def qc_paths(target: Path) -> Dict[str, Path]:
    folder = Path(target).parent / QC_FOLDER
    name = Path(target).name
    return {"json": folder / f"{name}.json", "full": folder / f"{name}.png", "thumb": folder / f"{name}_thumb.png"}


def _ct_rgb(slice_hu: np.ndarray) -> np.ndarray:
    low, high = SOFT_TISSUE
    grey = np.clip((slice_hu - low) / (high - low), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=2)


def _noise_rgb(slice_hu: np.ndarray) -> np.ndarray:
    t = np.clip(slice_hu / NOISE_RANGE_HU, -1.0, 1.0)
    return np.stack([np.where(t > 0, 1.0, 1.0 + t), 1.0 - np.abs(t), np.where(t < 0, 1.0, 1.0 - t)], axis=2)


def _strip(panels: List[np.ndarray], height: Optional[int], aspect: float) -> np.ndarray:
    """Panels (h, w, 3) in [0, 1] side by side, each resized to `height` (None: native height) with
    the in-plane pixel aspect (x spacing / y spacing) corrected; uint8 RGB."""
    from skimage.transform import resize

    h, w = panels[0].shape[:2]
    out_h = min(height or h, h)  # a thumbnail never enlarges
    out_w = max(1, int(round(out_h * w * aspect / h)))
    shown = [resize(p, (out_h, out_w, 3), order=1, anti_aliasing=out_h < h, preserve_range=True) for p in panels]
    gap = np.ones((out_h, GAP_PX, 3))
    strip = np.concatenate([x for p in shown for x in (p, gap)][:-1], axis=1)
    return np.round(np.clip(strip, 0, 1) * 255).astype(np.uint8)


def write_atomic(path: Path, write) -> None:
    """`write(temporary path)` then rename into place: a reader never sees half a file (created like
    any file, with the usual permissions). The temporary name is short whatever the final one: it
    fits wherever the final name does."""
    temp = path.with_name(f".qc-{uuid.uuid4().hex[:12]}{path.suffix}")
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import SimpleITK as sitk

    write_atomic(path, lambda temp: sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(temp)))


def _number(value: Any) -> Optional[float]:
    """A finite number, or None (JSON has no NaN; a run records NaN when it measured nothing)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    return float(value) if ok else None


def _mean_sd(rows: List[Dict[str, Any]], image: str) -> Optional[float]:
    values = [row["sd"] for row in rows if row["image"] == image]
    return _number(np.mean(values)) if values else None


def measure(source: Path, target: Path, record: Dict[str, Any]) -> Tuple[Dict[str, Any], np.ndarray, np.ndarray]:
    """(QC numbers, full-size strip, thumbnail strip) of an output against its input."""
    import SimpleITK as sitk

    from ..engine.noise_level import describe_run_estimate
    from ..files.volumes import read_volume
    from ..quality.trust import trust_report

    image = read_volume(source)
    input_hu = sitk.GetArrayFromImage(image).astype(np.float32)
    output_hu = sitk.GetArrayFromImage(read_volume(target)).astype(np.float32)
    spacing = image.GetSpacing()
    trust = trust_report(input_hu, output_hu, spacing)  # what `measure IN OUT` prints
    rows = trust.get("region_stats", [])
    shift = trust.get("hu_shift") or {}
    method = trust["method_noise"]
    run = record.get("run") or {}
    guard = run.get("guard") or {}
    qc = {
        "input": source.name,
        "output": target.name,
        "sidecar_sha256": sha256_file(sidecar_path(target)),
        "shape_zyx": list(input_hu.shape),
        "estimated_noise_hu": _number(run.get("estimated_noise_std_hu")),
        "estimated_noise_sharpness": _number(run.get("estimated_noise_sharpness")),
        "noise_estimate": describe_run_estimate(run),
        "noise_sd_input_hu": _mean_sd(rows, "input"),
        "noise_sd_output_hu": _mean_sd(rows, "denoised"),
        "uniform_regions": len(trust["regions"]),
        "hu_shift_hu": _number(shift.get("overall")),
        "hu_shift_within_tolerance": shift.get("within_tolerance"),
        "hu_shift_tolerance_hu": shift.get("tolerance_hu"),
        "method_noise_score": _number(method["score"]),
        "method_noise_level": method["level"],
        "method_noise_reading": method["reading"],
        "guard_fell_back": bool(guard.get("fell_back")),
        "guard_reason": guard.get("reason"),
        "elapsed_s": record.get("elapsed_s"),
        "device": record.get("device"),
        "threads": record.get("threads"),
        "steps": (record.get("parameters") or {}).get("steps"),
        "strength": applied_strength(record),
        "target_noise_hu": (record.get("parameters") or {}).get("target_noise"),
        "bundle": (record.get("bundle") or {}).get("name"),
    }
    mid = len(input_hu) // 2
    panels = [_ct_rgb(input_hu[mid]), _ct_rgb(output_hu[mid]), _noise_rgb(input_hu[mid] - output_hu[mid])]
    aspect = spacing[0] / spacing[1]
    return qc, _strip(panels, None, aspect), _strip(panels, THUMB_PX, aspect)


def write_qc(source: Path, target: Path) -> Dict[str, Any]:
    """Measure a complete output and write its QC files (the JSON last); returns the QC record."""
    paths = qc_paths(target)
    problem = too_long(paths.values(), "QC file")
    if problem is not None:
        raise InputError(problem)
    try:
        paths["json"].parent.mkdir(exist_ok=True)
    except OSError as exc:  # e.g. a file named qc where the folder goes
        raise InputError(f"cannot make the QC folder {paths['json'].parent} ({exc.strerror})") from None
    qc, full, thumb = measure(Path(source), Path(target), read_sidecar(target))
    _write_png(paths["full"], full)
    _write_png(paths["thumb"], thumb)
    write_atomic(paths["json"], lambda temp: temp.write_text(json.dumps(qc, indent=1), encoding="utf-8"))
    return qc


def read_qc(target: Path) -> Optional[Dict[str, Any]]:
    """The QC record of a complete output, or None when it is missing, unreadable or made for an
    earlier version of the output (another sidecar)."""
    paths = qc_paths(target)
    try:
        qc = json.loads(paths["json"].read_text(encoding="utf-8"))
        current = sha256_file(sidecar_path(target))
    except (OSError, ValueError):
        return None
    if not isinstance(qc, dict) or qc.get("sidecar_sha256") != current or not paths["thumb"].is_file():
        return None
    return qc


def flags(qc: Optional[Dict[str, Any]], error: Optional[str] = None,
          qc_error: Optional[str] = None) -> List[Tuple[str, str]]:
    """What a reviewer should look at, as (level, text): level "flag" (look at this volume) or "note".
    `error`: why the volume failed; `qc_error`: why the QC of its complete output could not be made."""
    if error is not None:
        return [("flag", f"failed: {error}")]
    if qc is None:
        return [("flag", f"QC image failed: {qc_error}" if qc_error else "no QC: the output is not complete")]
    found = []
    level = qc.get("method_noise_level")
    if level == "structure":
        found.append(("flag", f"method noise {qc['method_noise_score']:+.2f}: {qc['method_noise_reading']}"))
    elif level == "borderline":
        found.append(("note", f"method noise {qc['method_noise_score']:+.2f}: {qc['method_noise_reading']}"))
    elif level in ("empty", "no edges"):
        found.append(("note", f"method noise: {qc['method_noise_reading']}"))
    if qc.get("hu_shift_within_tolerance") is False:
        found.append(("flag", f"mean-HU shift {qc['hu_shift_hu']:+.1f} HU outside "
                              f"+/-{qc['hu_shift_tolerance_hu']:.0f} HU"))
    if qc.get("guard_fell_back"):
        found.append(("flag", f"guard: pretrained model used ({qc.get('guard_reason') or 'adaptation rejected'})"))
    if qc.get("estimated_noise_hu") is None:
        found.append(("note", "input noise not estimated (no soft tissue)"))
    if qc.get("noise_sd_input_hu") is None:
        found.append(("note", "no uniform soft-tissue region: noise SD not measured"))
    if qc.get("hu_shift_hu") is None:
        found.append(("note", "no uniform soft tissue: HU shift not measured"))
    return found
