"""The numbers that say a denoised volume removed noise and nothing else, in one place, for the
CLI (`evaluate`, `measure`), the benchmark and the Slicer panel: noise SD and mean per region before
and after, the mean-HU shift in uniform regions and the method-noise score (see regions.py, hu_shift.py and method_noise.py)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from .hu_shift import hu_shift
from .method_noise import method_noise_score
from .regions import Box, compare_regions, find_uniform_regions, uniform_tissue_mask


def trust_report(input_hu: np.ndarray, output_hu: np.ndarray, spacing_xyz: Sequence[float],
                 boxes: Optional[Sequence[Box]] = None) -> Dict[str, Any]:
    """Regions for the noise table default to uniform soft-tissue boxes found automatically on the
    input; the HU shift is measured over all uniform soft tissue (a mask: the mean of the removed
    noise averages out over it, so a systematic shift is what remains)."""
    input_hu = np.asarray(input_hu, np.float32)
    output_hu = np.asarray(output_hu, np.float32)
    automatic = not boxes
    boxes = list(boxes) if boxes else find_uniform_regions(input_hu, spacing_xyz, n=3)
    report: Dict[str, Any] = {"regions": [str(b) for b in boxes], "regions_found_automatically": automatic,
                              "method_noise": method_noise_score(input_hu, output_hu)}
    if boxes:
        report["region_stats"] = compare_regions(
            {"input": input_hu, "denoised": output_hu, "noise map": input_hu - output_hu}, boxes)
    mask = uniform_tissue_mask(input_hu, max_slices=16)
    if mask.any():
        report["hu_shift"] = hu_shift(input_hu, output_hu, mask)
    return report


def format_report(report: Dict[str, Any]) -> str:
    lines = []
    for row in report.get("region_stats", []):
        lines.append(f"  region {row['region']} [{row['box']}] {row['image']:<9}: mean {row['mean']:8.2f} HU, "
                     f"SD {row['sd']:6.2f} HU ({row['n']} voxels)")
    if "hu_shift" in report:
        shift = report["hu_shift"]
        lines.append(f"  mean-HU shift in uniform regions: {shift['overall']:+.2f} HU "
                     f"({'within' if shift['within_tolerance'] else 'OUTSIDE'} +/-{shift['tolerance_hu']:.0f} HU)")
    if "region_stats" not in report:
        lines.append("  no uniform soft-tissue region found for the noise table: give one with --region")
    mn = report["method_noise"]
    lines.append(f"  method noise {mn['score']:+.2f}: {mn['reading']}")
    return "\n".join(lines)
