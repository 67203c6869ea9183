"""Does it keep the faint lesion? Contrast retained, CNR and CHO detectability of inserted discs.

For each held-out subject and dose: `layouts` placements of discs (every size x signed contrast
once) on normal-dose slices, each slice `repeats` times with its discs and `repeats` times without,
every copy with its own projection-domain low-dose noise (lowdose.simulate_low_dose, the subject's
dose calibration). The copies, stacked, are one lesion volume: the product's per-volume adaptation
runs on it as on any volume (it sees lesion and lesion-free copies alike), and so does every
other row of the benchmark (rows and their settings are benchmark.methods()'s). Measures per disc
size and contrast, over the known positions (lesions.py, observer.py):

- contrast retained: mean over the disc core of (with - without), averaged over copies, over the
  inserted contrast (AAPM TG-233: lesion mean minus background mean; here the background is the
  same position without the disc, so anatomy cancels);
- CNR: that contrast over the pixel noise SD of the lesion-free copies at the same positions;
- d' (and AUC) of the channelized Hotelling observer, background known exactly (observer.py),
  with a bootstrap standard error over positions; +C and -C discs pooled (sign-flipped).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.bundle import Bundle
from ..engine.config import AdaptConfig
from ..errors import InputError
from .lesions import Lesion, core_mask, disc_fraction, insert_lesions, place_lesions, roi
from .observer import (channel_outputs, channel_width_mm, dprime_of_groups, group_statistics, hotelling_dprime,
                       laguerre_gauss_channels, roi_half_width_mm)

SIZES_MM = (3.0, 5.0, 10.0)
CONTRASTS_HU = (5.0, 10.0, 20.0)   # each inserted as +C and -C
TAGS = ("d25_hann", "d12_hann")    # the training dose and an unseen one
#: benchmark.methods() rows measured here (names or unique parts of names), in table order.
#: Every row works slice by slice: the lesion volume stacks copies of one slice with independent noise,
#: which a 3D filter would average (Slicer's 3D diffusion is the benchmark's row, not this one's).
ROWS = ("LDCT", "N2C (pretrained)", "shipped default", "oracle", "BM3D with the noise PSD",
        "Curvature diffusion, slice by slice")
#: Context kept around the ROIs when the simulated slices are cropped (pixels): beyond the RED-CNN's
#: receptive field and BM3D's search window, so the ROIs denoise as in the whole slice.
CROP_MARGIN_PX = 24
#: Paired comparisons (numerator row, denominator row) on the same positions and noise draws.
COMPARISONS = (("shipped default", "LDCT"), ("shipped default", "N2C (pretrained)"),
               ("shipped default", "BM3D with the noise PSD"), ("shipped default", "Curvature diffusion, slice by slice"),
               ("strength low", "shipped default"), ("shipped default", "oracle"))
PLACEMENT_TRIES = 20
N_BOOTSTRAP = 500
SECTION = "lesions"
#: The crops shown per size: a lesion of this contrast, at least this much tissue around it.
CROP_CONTRAST_HU = 10.0
CROP_HALF_MM = 12.0


def conditions(sizes: Sequence[float] = SIZES_MM, contrasts: Sequence[float] = CONTRASTS_HU) -> List[Tuple[float, float]]:
    """Every (diameter mm, signed contrast HU) of one layout."""
    return [(float(d), sign * float(c)) for d in sizes for c in contrasts for sign in (1.0, -1.0)]


def _half_px(diameter: float, spacing_yx: Sequence[float]) -> Tuple[int, int]:
    half = roi_half_width_mm(diameter)
    return int(math.ceil(half / spacing_yx[0])), int(math.ceil(half / spacing_yx[1]))


@dataclass
class LesionVolume:
    """The stacked copies of one subject at one dose, cropped around the ROIs."""

    subject: str
    tag: str
    spacing_xyz: Tuple[float, float, float]
    ldct: np.ndarray                 # (copies, y, x) float32 HU
    truth: np.ndarray                # the same without noise (normal-dose slice + discs or not)
    present: np.ndarray              # (copies,) bool: the copy holds its layout's discs
    layout: np.ndarray               # (copies,) int
    layouts: List[List[Lesion]]      # per layout, lesion centres in crop coordinates
    base_slices: List[int]
    crop: Tuple[int, int, int, int]  # y0, y1, x0, x1 in the original slice
    oracle_noise: np.ndarray = field(repr=False, default=None)  # independent noise of the same copies

    @property
    def spacing_yx(self) -> Tuple[float, float]:
        return self.spacing_xyz[1], self.spacing_xyz[0]


def build_lesion_volume(reference: np.ndarray, spacing_xyz: Sequence[float], subject: str, tag: str, *,
                        i0_full: float, sigma_e: float, layouts: int, repeats: int, seed: int,
                        sizes: Sequence[float] = SIZES_MM, contrasts: Sequence[float] = CONTRASTS_HU) -> LesionVolume:
    """Place, insert, simulate and crop (see the module doc). The layouts depend on the subject and
    seed only (the same discs at every dose); the noise on the dose too."""
    from ..data.lowdose import DoseSpec, make_rng, simulate_low_dose
    from ..engine.arrays import evenly_spaced

    if repeats < 2:
        raise InputError("repeats must be >= 2 (the observer's covariance is measured within positions).")
    reference = np.asarray(reference, np.float32)
    spacing_yx = (float(spacing_xyz[1]), float(spacing_xyz[0]))
    spec = DoseSpec.from_tag(tag)
    rng = make_rng(seed, subject, "lesion-layout")
    picks = evenly_spaced(len(reference), layouts)
    base_slices = [int(picks[i % len(picks)]) for i in range(layouts)]
    placed: List[List[Lesion]] = []
    for z in base_slices:
        for attempt in range(PLACEMENT_TRIES):  # a random greedy placement can paint itself into a corner
            try:
                placed.append(place_lesions(reference[z], spacing_yx, conditions(sizes, contrasts), roi_half_width_mm, rng))
                break
            except InputError:
                if attempt == PLACEMENT_TRIES - 1:
                    raise
    truth, present, layout_of = [], [], []
    for index, (z, lesions) in enumerate(zip(base_slices, placed)):
        with_discs = insert_lesions(reference[z], lesions, spacing_yx)
        for has in (True, False):
            truth += [with_discs if has else reference[z]] * repeats
            present += [has] * repeats
            layout_of += [index] * repeats
    truth = np.stack(truth)
    noise_seed = int(make_rng(seed, subject, tag, "lesion-noise").integers(2**31))
    ldct = simulate_low_dose(truth, spacing_xyz, spec.dose, spec.filter, seed=noise_seed, i0_full=i0_full, sigma_e=sigma_e)
    # crop to the ROIs plus context: the simulation needed the whole slice, the denoisers do not
    y0 = x0 = 10 ** 9
    y1 = x1 = 0
    for lesions in placed:
        for lesion in lesions:
            hy, hx = _half_px(lesion.diameter_mm, spacing_yx)
            y0, y1 = min(y0, lesion.y - hy), max(y1, lesion.y + hy + 1)
            x0, x1 = min(x0, lesion.x - hx), max(x1, lesion.x + hx + 1)
    rows, cols = reference.shape[1:]
    y0, x0 = max(0, y0 - CROP_MARGIN_PX), max(0, x0 - CROP_MARGIN_PX)
    y1, x1 = min(rows, y1 + CROP_MARGIN_PX), min(cols, x1 + CROP_MARGIN_PX)
    shifted = [[Lesion(l.y - y0, l.x - x0, l.diameter_mm, l.contrast_hu) for l in lesions] for lesions in placed]
    ldct, truth = ldct[:, y0:y1, x0:x1].copy(), truth[:, y0:y1, x0:x1].copy()
    present, layout_of = np.array(present), np.array(layout_of)
    # oracle: each copy gets the noise of the next copy of its group (same slice and class): true
    # projection-domain noise of this very image, independent of its own
    noise = ldct - truth
    partner = np.arange(len(ldct)).reshape(-1, repeats)
    oracle = noise[np.roll(partner, -1, axis=1).ravel()]
    return LesionVolume(subject, tag, tuple(float(s) for s in spacing_xyz), ldct, truth, present, layout_of, shifted,
                        base_slices, (y0, y1, x0, x1), oracle)


def lesion_rows(rows: Sequence[str] = ROWS) -> List[Any]:
    """The benchmark's Method of each of `rows` (a name or a unique part of one)."""
    from .benchmark import methods

    chosen = []
    for text in rows:
        found = [m for m in methods() if m.bundle == "n2c" and (m.name == text or text in m.name)]
        if len(found) != 1:
            raise RuntimeError(f"benchmark row {text!r} matched {len(found)} rows")
        chosen.append(found[0])
    return chosen


def run_rows(volume: LesionVolume, bundle: Bundle, steps: int, log: Callable[[str], None] = print,
             rows: Sequence[str] = ROWS) -> Dict[str, Any]:
    """Every row on the lesion volume: {name: {"output", "seconds", "guard_fell_back"}}, plus the
    shipped default at strength low (a blend of the same run, as in the benchmark)."""
    from ..engine.run import denoise_array, estimate_input_noise
    from ..engine.strength import STRENGTH_LEVELS, strength_blend

    base = AdaptConfig(steps=steps)
    estimate = estimate_input_noise(volume.ldct, bundle, base)
    outputs: Dict[str, Any] = {}
    for method in lesion_rows(rows):
        started = time.perf_counter()
        fell_back, full = None, None
        if method.filter is not None:
            output = method.filter(volume.ldct, {"spacing": volume.spacing_xyz, "bundle": bundle, "estimate": estimate})
        else:
            result = denoise_array(volume.ldct, bundle, base.with_(**method.config),
                                   oracle_noise=volume.oracle_noise if method.oracle else None)
            output, full = result.denoised, result.full_strength
            fell_back = bool((result.info["run"].get("guard") or {}).get("fell_back", False))
        outputs[method.name] = {"output": np.asarray(output, np.float32), "seconds": round(time.perf_counter() - started, 1),
                                "guard_fell_back": fell_back}
        log(f"{volume.tag:9} {volume.subject:11} {method.name:50} {outputs[method.name]['seconds']:7.1f} s")
        if "shipped default" in method.name:
            level = STRENGTH_LEVELS["low"]
            outputs[f"{method.name}, strength low ({level})"] = {
                "output": strength_blend(volume.ldct, full, level), "seconds": 0.0, "guard_fell_back": fell_back}
    return outputs


def position_records(volume: LesionVolume, output: np.ndarray) -> List[Dict[str, Any]]:
    """Per lesion position: channel outputs of its ROI in the copies with and without the disc,
    the measured contrast over the disc core and the pixel noise variance without the disc."""
    records = []
    spacing = volume.spacing_yx
    channels, cores = {}, {}
    for index, lesions in enumerate(volume.layouts):
        with_disc = np.flatnonzero((volume.layout == index) & volume.present)
        without = np.flatnonzero((volume.layout == index) & ~volume.present)
        for k, lesion in enumerate(lesions):
            d = lesion.diameter_mm
            half = _half_px(d, spacing)
            if d not in channels:
                shape = (2 * half[0] + 1, 2 * half[1] + 1)
                channels[d] = laguerre_gauss_channels(shape, spacing, channel_width_mm(d))
                cores[d] = core_mask(disc_fraction(shape, half, d, spacing))
            r1 = np.stack([roi(output[t], (lesion.y, lesion.x), half) for t in with_disc]).astype(np.float64)
            r0 = np.stack([roi(output[t], (lesion.y, lesion.x), half) for t in without]).astype(np.float64)
            sign = 1.0 if lesion.contrast_hu > 0 else -1.0  # -C discs sign-flipped: the background cancels within a position
            records.append({
                "subject": volume.subject, "tag": volume.tag, "layout": index, "lesion": k, "diameter_mm": d,
                "contrast_hu": lesion.contrast_hu,
                "v1": (sign * channel_outputs(r1, channels[d], spacing)).tolist(),
                "v0": (sign * channel_outputs(r0, channels[d], spacing)).tolist(),
                "contrast_measured": float((r1.mean(0) - r0.mean(0))[cores[d]].mean()),
                "noise_var": float(r0.var(axis=0, ddof=1).mean()),
            })
    return records


def summarise(records: List[Dict[str, Any]], n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> Dict[str, Any]:
    """d', contrast retained and CNR of one method, one dose and one (size, |contrast|), pooled
    over the positions of `records` (every subject)."""
    v1 = np.concatenate([np.asarray(r["v1"]) for r in records])
    v0 = np.concatenate([np.asarray(r["v0"]) for r in records])
    g1 = np.concatenate([np.full(len(r["v1"]), i) for i, r in enumerate(records)])
    g0 = np.concatenate([np.full(len(r["v0"]), i) for i, r in enumerate(records)])
    observer = hotelling_dprime(v1, v0, g1, g0, n_bootstrap=n_bootstrap, seed=seed)
    retained = np.array([r["contrast_measured"] / r["contrast_hu"] for r in records])
    by_sign = {s: float(np.mean([r["contrast_measured"] / r["contrast_hu"] for r in records
                                 if np.sign(r["contrast_hu"]) == s])) for s in (1.0, -1.0)
               if any(np.sign(r["contrast_hu"]) == s for r in records)}
    noise_sd = math.sqrt(float(np.mean([r["noise_var"] for r in records])))
    contrast = float(np.mean([abs(r["contrast_measured"]) for r in records]))
    return {"dprime": observer["dprime"], "dprime_se": observer.get("dprime_se"), "dprime_ci95": observer.get("dprime_ci95"),
            "auc": observer["auc"], "n_present": observer["n_present"], "n_absent": observer["n_absent"],
            "n_positions": observer["n_groups"],
            "contrast_retained": float(retained.mean()),
            "contrast_retained_se": float(retained.std(ddof=1) / math.sqrt(len(retained))),
            "contrast_retained_by_sign": {("+" if s > 0 else "-"): v for s, v in by_sign.items()},
            "noise_sd_hu": noise_sd, "cnr": contrast / noise_sd if noise_sd > 0 else float("nan")}


def run_lesion_benchmark(dataset: Path, bundle: Bundle, *, tags: Sequence[str] = TAGS, steps: int = 200,
                         layouts: int = 5, repeats: int = 4, seed: int = 0, reference: str = "clean",
                         subjects: Optional[Sequence[str]] = None, sizes: Sequence[float] = SIZES_MM,
                         contrasts: Sequence[float] = CONTRASTS_HU, n_bootstrap: int = N_BOOTSTRAP,
                         log: Callable[[str], None] = print, crop_subject: Optional[str] = "pancreas",
                         rows: Sequence[str] = ROWS) -> Dict[str, Any]:
    """Lesion volumes of the held-out subjects at each dose, every row on them, the measures.
    Full-resolution crops of one +`CROP_CONTRAST_HU` lesion per size of `crop_subject` (else the
    first subject) go to results["crops"] for `write_crops`."""
    import platform

    import SimpleITK as sitk

    from ..data.dataset import load_manifest, subject_paths
    from ..data.lowdose import DEFAULT_SIGMA_E
    from ..engine.inference import describe_device, resolve_device
    from ..quality.method_noise import method_noise_score
    from .benchmark import _git_commit

    if reference not in ("clean", "ndct"):
        raise InputError("reference must be 'clean' (the denoised normal-dose image) or 'ndct'.")
    started, cpu_started = time.perf_counter(), time.process_time()
    commit = _git_commit()
    manifest = load_manifest(dataset)
    entries = {s["key"]: s for s in manifest["subjects"]}
    keys = list(subjects) if subjects else [s["key"] for s in manifest["subjects"] if s["split"] == "test"]
    sigma_e = manifest.get("simulation", {}).get("sigma_e_counts", DEFAULT_SIGMA_E)
    records: List[Dict[str, Any]] = []
    per_volume, crops, geometry = [], {}, {}
    for tag in tags:
        for key in keys:
            if key not in entries:
                raise InputError(f"No subject {key!r} in {dataset}/manifest.json.")
            reference_path = subject_paths(dataset, key, tag, clean=reference == "clean")[1]
            image = sitk.ReadImage(str(reference_path))
            volume = build_lesion_volume(sitk.GetArrayFromImage(image), image.GetSpacing(), key, tag,
                                         i0_full=entries[key]["i0_full"], layouts=layouts, repeats=repeats, seed=seed,
                                         sigma_e=sigma_e, sizes=sizes, contrasts=contrasts)
            geometry[key] = {"spacing_xyz": list(volume.spacing_xyz), "crop_yx": list(volume.crop),
                             "base_slices": volume.base_slices, "copies": int(len(volume.ldct)),
                             "layouts": [[l.to_dict() for l in lesions] for lesions in volume.layouts]}
            outputs = run_rows(volume, bundle, steps, log, rows)
            for name, out in outputs.items():
                per_volume.append({"tag": tag, "subject": key, "method": name, "seconds": out["seconds"],
                                   "guard_fell_back": out["guard_fell_back"],
                                   "method_noise": method_noise_score(volume.ldct, out["output"])["score"]})
                records += [{**r, "method": name} for r in position_records(volume, out["output"])]
            if key == (crop_subject if crop_subject in keys else keys[0]):
                crops[tag] = lesion_crops(volume, {name: out["output"] for name, out in outputs.items()})
    device = describe_device(resolve_device(AdaptConfig().device))
    results = {"records": records, "volumes": per_volume, "subjects": geometry,
               "meta": {"tags": list(tags), "subjects": keys, "steps": steps, "layouts": layouts, "repeats": repeats,
                        "seed": seed, "reference": reference, "sizes_mm": list(sizes), "contrasts_hu": list(contrasts),
                        "n_bootstrap": n_bootstrap, "device": device, "commit": commit,
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "seconds": round(time.perf_counter() - started),
                        "cpu_seconds": round(time.process_time() - cpu_started),
                        "bundle": {"path": str(bundle.path), "sha256": bundle.sha256, "profile": bundle.profile.name},
                        "python": platform.python_version()}}
    results["crops"] = crops
    results["rows"] = summary_rows(records, keys, n_bootstrap, seed)
    results["comparisons"] = paired_comparisons(records, n_bootstrap=n_bootstrap, seed=seed)
    return results


def _resolve(text: str, names: Sequence[str]) -> Optional[str]:
    """The row name `text` stands for: itself, else the one name holding it (strength blends only
    when asked for)."""
    if text in names:
        return text
    found = [n for n in names if text in n and ("strength" in text or "strength" not in n)]
    return found[0] if len(found) == 1 else None


def paired_comparisons(records: List[Dict[str, Any]], comparisons: Sequence[Tuple[str, str]] = COMPARISONS,
                       n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> List[Dict[str, Any]]:
    """Sum of d' over the contrasts of each size (and over every cell) of one row over another's,
    with a bootstrap 95 % interval that resamples the same positions for both rows: every row saw
    the same positions and noise draws, so the comparison is much tighter than the rows' own
    errors suggest. P(ratio > 1) is the fraction of resamples above 1."""
    cells: Dict[Tuple[str, float, float], Dict[str, Any]] = {}
    for r in records:
        cells.setdefault((r["tag"], r["diameter_mm"], abs(r["contrast_hu"])), {}).setdefault(r["method"], []).append(r)
    rng = np.random.default_rng(seed)
    boot: Dict[Tuple[str, float, float], Dict[str, np.ndarray]] = {}
    point: Dict[Tuple[str, float, float], Dict[str, float]] = {}
    for cell, by_method in cells.items():
        n = len(next(iter(by_method.values())))
        picks = [np.arange(n)] + [rng.integers(0, n, n) for _ in range(n_bootstrap)]  # shared by every row
        boot[cell], point[cell] = {}, {}
        for name, group in by_method.items():
            group = sorted(group, key=lambda r: (r["subject"], r["layout"], r["lesion"]))  # same order per row
            stats = group_statistics(np.concatenate([np.asarray(r["v1"]) for r in group]),
                                     np.concatenate([np.asarray(r["v0"]) for r in group]),
                                     np.concatenate([np.full(len(r["v1"]), i) for i, r in enumerate(group)]),
                                     np.concatenate([np.full(len(r["v0"]), i) for i, r in enumerate(group)]))
            values = np.array([dprime_of_groups(stats, pick) for pick in picks])
            point[cell][name], boot[cell][name] = values[0], values[1:]
    out = []
    tags = list(dict.fromkeys(c[0] for c in cells))
    sizes = sorted({c[1] for c in cells})
    for tag in tags:
        names = list(cells[next(c for c in cells if c[0] == tag)])
        for numerator, denominator in comparisons:
            a, b = _resolve(numerator, names), _resolve(denominator, names)
            if a is None or b is None:
                continue
            for size in sizes + [None]:
                mine = [c for c in cells if c[0] == tag and (size is None or c[1] == size)]
                with np.errstate(divide="ignore", invalid="ignore"):  # a denominator of 0: no ratio
                    ratios = sum(boot[c][a] for c in mine) / sum(boot[c][b] for c in mine)
                    value = np.float64(sum(point[c][a] for c in mine)) / sum(point[c][b] for c in mine)
                ratios = ratios[np.isfinite(ratios)]
                out.append({"tag": tag, "numerator": a, "denominator": b, "diameter_mm": size, "contrast_hu": None,
                            "ratio": float(value) if np.isfinite(value) else None,
                            "ci95": [float(np.percentile(ratios, q)) for q in (2.5, 97.5)] if ratios.size else None,
                            "p_ratio_above_1": float((ratios > 1).mean()) if ratios.size else None})
            for cell in sorted(c for c in cells if c[0] == tag):  # per cell: the difference (d' near 0 makes ratios wild)
                difference = boot[cell][a] - boot[cell][b]
                difference = difference[np.isfinite(difference)]
                out.append({"tag": tag, "numerator": a, "denominator": b, "diameter_mm": cell[1], "contrast_hu": cell[2],
                            "difference": float(point[cell][a] - point[cell][b]),
                            "ci95": [float(np.percentile(difference, q)) for q in (2.5, 97.5)] if difference.size else None})
    return out


def summary_rows(records: List[Dict[str, Any]], subjects: Sequence[str], n_bootstrap: int = N_BOOTSTRAP,
                 seed: int = 0) -> List[Dict[str, Any]]:
    """One row per dose, method, size and |contrast|: `summarise` over every subject, and d' per subject."""
    groups: Dict[Tuple[str, str, float, float], List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["tag"], r["method"], r["diameter_mm"], abs(r["contrast_hu"])), []).append(r)
    rows = []
    for (tag, name, diameter, contrast), group in groups.items():
        per_subject = {}
        for key in subjects:
            try:
                per_subject[key] = summarise([r for r in group if r["subject"] == key], 0)["dprime"]
            except ValueError:  # too few positions of one subject for the covariance
                per_subject[key] = None
        rows.append({"tag": tag, "method": name, "diameter_mm": diameter, "contrast_hu": contrast,
                     **summarise(group, n_bootstrap, seed), "dprime_per_subject": per_subject})
    return rows


def merge_lesion_results(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Combine runs made in parallel (e.g. one process per dose) into one result."""
    merged = {"records": [], "volumes": [], "subjects": {}, "crops": {}, "meta": dict(parts[0]["meta"])}
    for part in parts:
        merged["crops"].update(part.get("crops", {}))
        merged["records"] += part["records"]
        merged["volumes"] += part["volumes"]
        merged["subjects"].update(part["subjects"])
    merged["meta"]["tags"] = list(dict.fromkeys(t for p in parts for t in p["meta"]["tags"]))
    merged["meta"]["command"] = "`, then `".join(p["meta"].get("command", "?") for p in parts)
    merged["meta"]["seconds_per_part"] = [p["meta"]["seconds"] for p in parts]
    merged["meta"]["cpu_seconds_per_part"] = [p["meta"].get("cpu_seconds") for p in parts]
    merged["meta"]["commit"] = ", ".join(dict.fromkeys(p["meta"]["commit"] for p in parts))
    merged["meta"]["date"] = max(p["meta"]["date"] for p in parts)
    meta = merged["meta"]
    merged["rows"] = summary_rows(merged["records"], meta["subjects"], meta["n_bootstrap"], meta["seed"])
    merged["comparisons"] = paired_comparisons(merged["records"], n_bootstrap=meta["n_bootstrap"], seed=meta["seed"])
    return merged


def _method_order(results: Dict[str, Any]) -> List[str]:
    names = list(dict.fromkeys(r["method"] for r in results["rows"]))
    rank = {m.name: i for i, m in enumerate(lesion_rows())}
    # a strength blend right after its full-strength row
    return sorted(names, key=lambda n: (rank.get(n.split(", strength")[0], len(rank)), ", strength" in n))


def _short(name: str) -> str:
    return (name.replace("N2C + Ours (shipped default: fitted, guarded)", "shipped default")
            .replace("N2C + oracle (true independent noise)", "oracle (true noise)")
            .replace("Curvature anisotropic diffusion (SimpleITK)", "anisotropic diffusion")
            .replace("BM3D with the noise PSD", "BM3D (estimated PSD)"))


def write_dprime_plot(results: Dict[str, Any], png: Path) -> Path:
    """d' vs lesion size per method; one panel per (dose, contrast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    meta, rows = results["meta"], results["rows"]
    tags, contrasts, sizes = meta["tags"], meta["contrasts_hu"], meta["sizes_mm"]
    fig, axes = plt.subplots(len(tags), len(contrasts), figsize=(4.2 * len(contrasts), 3.4 * len(tags) + 0.7),
                             squeeze=False, sharex=True)
    names = _method_order(results)
    for i, tag in enumerate(tags):
        for j, contrast in enumerate(contrasts):
            ax = axes[i][j]
            for k, name in enumerate(names):
                mine = {r["diameter_mm"]: r for r in rows if r["tag"] == tag and r["method"] == name
                        and r["contrast_hu"] == contrast}
                if not mine:
                    continue
                x = [s * (1 + 0.02 * (k - len(names) / 2)) for s in sizes if s in mine]  # offset: error bars apart
                ax.errorbar(x, [mine[s]["dprime"] for s in sizes if s in mine],
                            yerr=[mine[s]["dprime_se"] or 0 for s in sizes if s in mine], marker="o", ms=3,
                            capsize=2, lw=1, ls="--" if "strength" in name else "-", label=_short(name))
            ax.set_xscale("log")
            ax.set_xticks(sizes)
            ax.set_xticklabels([f"{s:g}" for s in sizes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{tag}, |contrast| {contrast:g} HU", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(tags) - 1:
                ax.set_xlabel("lesion diameter (mm)")
            if j == 0:
                ax.set_ylabel("CHO d'")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.09, 1, 1))  # room for the legend below the panels
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def lesion_crops(volume: LesionVolume, outputs: Dict[str, np.ndarray], contrast: float = CROP_CONTRAST_HU) -> Dict[str, Any]:
    """Per size, the square around the first +`contrast` HU lesion of layout 0 (half side: its ROI's,
    at least `CROP_HALF_MM`) in one copy with the lesion: the noise-free truth and every output,
    plus the HU of the tissue the disc sits in (median of the lesion-free truth under the disc)."""
    positive = sorted({l.contrast_hu for l in volume.layouts[0] if l.contrast_hu > 0})
    contrast = contrast if contrast in positive else positive[0]
    copy = int(np.flatnonzero((volume.layout == 0) & volume.present)[0])
    lesion_free = volume.truth[int(np.flatnonzero((volume.layout == 0) & ~volume.present)[0])]
    out: Dict[str, Any] = {"subject": volume.subject, "spacing_yx": list(volume.spacing_yx), "contrast_hu": contrast,
                           "sizes": {}}
    for lesion in volume.layouts[0]:
        if lesion.contrast_hu != contrast:
            continue
        half = [max(h, int(math.ceil(CROP_HALF_MM / s))) for h, s in zip(_half_px(lesion.diameter_mm, volume.spacing_yx),
                                                                         volume.spacing_yx)]
        half = [min(h, c, n - 1 - c) for h, c, n in zip(half, (lesion.y, lesion.x), lesion_free.shape)]
        under = disc_fraction(lesion_free.shape, (lesion.y, lesion.x), lesion.diameter_mm, volume.spacing_yx) > 0
        images = {"truth (noise-free)": roi(volume.truth[copy], (lesion.y, lesion.x), half)}
        images.update({name: roi(output[copy], (lesion.y, lesion.x), half) for name, output in outputs.items()})
        out["sizes"][f"{lesion.diameter_mm:g}"] = {
            "background_hu": float(np.median(lesion_free[under])),
            "images": {name: np.round(image.astype(np.float64), 1).tolist() for name, image in images.items()}}
    return out


def write_crops(results: Dict[str, Any], out_dir: Path, window_hu: float = 40.0) -> List[Path]:
    """Per dose, the `lesion_crops` as pictures: one screen block per image pixel (no smoothing),
    window = the tissue's HU ± `window_hu`, rows = truth and every method, columns = sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for tag, crops in results.get("crops", {}).items():
        sizes = sorted(crops["sizes"], key=float)
        if not sizes:
            continue
        names = list(crops["sizes"][sizes[0]]["images"])
        names = names[:1] + _method_order({"rows": [{"method": n} for n in names[1:]]})
        fig, axes = plt.subplots(len(names), len(sizes), figsize=(2.4 * len(sizes), 2.3 * len(names) + 0.6),
                                 squeeze=False)
        for j, size in enumerate(sizes):
            crop = crops["sizes"][size]
            low, high = crop["background_hu"] - window_hu, crop["background_hu"] + window_hu
            for i, name in enumerate(names):
                ax = axes[i][j]
                ax.imshow(np.asarray(crop["images"][name]), cmap="gray", interpolation="nearest", vmin=low, vmax=high)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{size} mm, +{crops['contrast_hu']:g} HU\nwindow {low:.0f} to {high:.0f} HU", fontsize=8)
                if j == 0:
                    ax.set_ylabel(_short(name), fontsize=7)
        fig.suptitle(f"{crops['subject']}, {tag}: the disc at the centre of each crop, one copy "
                     f"({crops['spacing_yx'][0]:.2f} mm pixels)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.3 * len(names) + 0.6)))
        path = out_dir / f"crops_{tag}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _cell(value: Optional[float], se: Optional[float] = None, digits: int = 2) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{value:.{digits}f}"


def report_section(results: Dict[str, Any], link_dir: str = "lesions") -> str:
    """The markdown section (tables) for docs/BENCHMARK.md; `link_dir`: the figures' folder relative
    to the report."""
    meta, rows = results["meta"], results["rows"]
    sizes, contrasts = meta["sizes_mm"], meta["contrasts_hu"]
    names = _method_order(results)
    columns = [(s, c) for s in sizes for c in contrasts]
    head = "| dose | method | " + " | ".join(f"{s:g} mm {c:g} HU" for s, c in columns) + " |"
    rule = "|---|---|" + "---|" * len(columns)
    index = {(r["tag"], r["method"], r["diameter_mm"], r["contrast_hu"]): r for r in rows}
    volumes = results["volumes"]

    def table(cell) -> List[str]:
        lines = [head, rule]
        for tag in meta["tags"]:
            for name in names:
                cells = [index.get((tag, name, s, c)) for s, c in columns]
                if any(cells):
                    lines.append(f"| {tag} | {_short(name)} | " + " | ".join(cell(r) if r else "-" for r in cells) + " |")
        return lines

    n = next(iter(rows))
    parts = meta.get("seconds_per_part") or [meta["seconds"]]
    cpu = meta.get("cpu_seconds_per_part") or [meta.get("cpu_seconds")]
    lines = [
        "## Low-contrast lesions: contrast retained, CNR and observer detectability", "",
        f"Generated by `{meta.get('command', 'selfsupctdenoise benchmark-lesions')}` at commit `{meta['commit']}` on "
        f"{meta['date']}, device {meta['device']} (per part: "
        + ", ".join(f"{w / 60:.0f} min wall / {c / 60:.0f} min CPU" if c is not None else f"{w / 60:.0f} min wall"
                    for w, c in zip(parts, cpu)) + ", niced on a busy 2-core machine); "
        f"bundle `{os.path.relpath(meta['bundle']['path'])}` (manifest sha256 {meta['bundle']['sha256'][:12]}), "
        f"{meta['steps']} adaptation steps"
        + (f"; parts merged with `{meta['merge_command']}`" if meta.get("merge_command") else "")
        + f". Raw numbers: `{link_dir}/lesions.json`.", "",
        f"Discs of {', '.join(f'{s:g}' for s in sizes)} mm at ±{', ±'.join(f'{c:g}' for c in contrasts)} HU were "
        "inserted (partial volume) into the "
        f"{'denoised normal-dose (`clean`)' if meta['reference'] == 'clean' else 'normal-dose'} "
        f"slices of the held-out subjects ({', '.join(meta['subjects'])}) at known positions in the flatter soft "
        "tissue (local mean −30…150 HU, fat left out; the steepest quarter of gradient left out, so a disc may sit "
        "near an organ border or vessel) with no other disc in its ROI (`lesions.py`), every size and signed "
        "contrast once per layout; "
        f"{meta['layouts']} layouts per subject, each slice {meta['repeats']} times with and {meta['repeats']} times "
        "without its discs, every copy with its own projection-domain low-dose noise (`lowdose.py`, the subject's "
        "dose calibration) — so the lesion-free copies are the observer's negative class at the same positions. "
        "The copies of one subject and dose form one volume, cropped around the ROIs after simulation "
        f"(+{CROP_MARGIN_PX} px of context), on which every row runs as in the benchmark: the adaptation (shipped "
        "default, oracle) adapts on that volume; the oracle's noise is another copy's true noise; strength low is a "
        "blend of the shipped default's run.", "",
        "- **Contrast retained**: mean over the disc's fully covered pixels of (with − without), averaged over the "
        "copies, over the inserted contrast (AAPM TG-233, Samei et al., Med. Phys. 2019: lesion minus background; "
        "the background here is the same position without the disc), ± standard error over positions; +C and −C "
        "averaged (per sign in the JSON).",
        "- **CNR**: that contrast over the pixel noise SD of the lesion-free copies at the same positions (TG-233's "
        "CNR). Smoothing raises it even when a lesion fades: read it with d′.",
        "- **d′**: channelized Hotelling observer (Barrett & Myers, *Foundations of Image Science*, 2004; "
        "Laguerre–Gauss channels, Barrett et al., PNAS 1993, Gallas & Barrett, JOSA A 2003; its use for CT "
        "low-contrast detection: Yu et al., Med. Phys. 2013 and 2017), 6 channels of width = disc diameter, "
        "signal and background known exactly (covariance within positions, `observer.py`), d′² corrected for "
        "its finite-sample bias (Wunderlich et al., IEEE TMI 2015), ± bootstrap standard error over positions; "
        "±C pooled. AUC = Φ(d′/√2) in the JSON.", "",
        f"Trials per cell: {n['n_present']} with and {n['n_absent']} without the disc at {n['n_positions']} positions.", "",
        "### CHO d′ (± bootstrap SE)", ""]
    lines += table(lambda r: _cell(r["dprime"], r["dprime_se"]))
    lines += ["", "### Contrast retained (measured / inserted, ± SE)", ""]
    lines += table(lambda r: _cell(r["contrast_retained"], r["contrast_retained_se"]))
    lines += ["", "### CNR", ""]
    lines += table(lambda r: _cell(r["cnr"], None, 2))
    lines += ["", "### Per method: d′ summed over the cells relative to the LDCT's, noise SD and method noise", "",
              "| dose | method | d′ / d′(LDCT) | noise SD (HU) | method noise | guard fell back |",
              "|---|---|---|---|---|---|"]
    for tag in meta["tags"]:
        for name in names:
            both = [(index[(tag, name, s, c)]["dprime"], index[(tag, "LDCT", s, c)]["dprime"])
                    for s, c in columns if (tag, name, s, c) in index and (tag, "LDCT", s, c) in index]
            # sum over sum: cells where the LDCT's d' is near 0 would dominate a mean of ratios
            ratios = [sum(a for a, _ in both) / sum(b for _, b in both)] if both and sum(b for _, b in both) > 0 else []
            noise = [index[(tag, name, s, c)]["noise_sd_hu"] for s, c in columns if (tag, name, s, c) in index]
            mine = [v for v in volumes if v["tag"] == tag and v["method"] == name]
            fell = [v["guard_fell_back"] for v in mine if v["guard_fell_back"] is not None]
            lines.append(f"| {tag} | {_short(name)} | {_cell(float(np.mean(ratios)) if ratios else None)} | "
                         f"{_cell(float(np.mean(noise)) if noise else None, None, 1)} | "
                         f"{_cell(float(np.mean([v['method_noise'] for v in mine])) if mine else None)} | "
                         f"{f'{sum(fell)} of {len(fell)}' if fell else '-'} |")
    if results.get("comparisons"):
        lines += ["", "### Paired comparisons: Σ d′ over the contrasts of one row over another's [95 % CI]", "",
                  "Same positions and noise draws for both rows; the interval resamples positions for both at once "
                  "(bootstrap), P = fraction of resamples with a ratio above 1. Last column: size × contrast cells "
                  "where the 95 % interval of the d′ difference lies above / below 0 (per cell in the JSON).", "",
                  "| dose | rows | " + " | ".join(f"{s:g} mm" for s in sizes) + " | all cells | cells higher / lower |",
                  "|---|---|" + "---|" * (len(sizes) + 2)]
        pairs = list(dict.fromkeys((c["tag"], c["numerator"], c["denominator"]) for c in results["comparisons"]))
        for tag, a, b in pairs:
            same = [c for c in results["comparisons"] if (c["tag"], c["numerator"], c["denominator"]) == (tag, a, b)]
            mine = {c["diameter_mm"]: c for c in same if c.get("contrast_hu") is None}
            per_cell = [c for c in same if c.get("contrast_hu") is not None and c["ci95"]]
            higher = sum(c["ci95"][0] > 0 for c in per_cell)
            lower = sum(c["ci95"][1] < 0 for c in per_cell)
            lines.append(f"| {tag} | {_short(a)} / {_short(b)} | " + " | ".join(
                f"{mine[s]['ratio']:.2f} [{mine[s]['ci95'][0]:.2f}, {mine[s]['ci95'][1]:.2f}], "
                f"P {mine[s]['p_ratio_above_1']:.2f}"
                if s in mine and mine[s]["ratio"] is not None and mine[s]["ci95"] else "-"
                for s in list(sizes) + [None]) + f" | {higher} / {lower} of {len(per_cell)} |")
    lines += ["", f"![d' vs lesion size]({link_dir}/dprime_vs_size.png)", ""]
    crops = [f"[{t}]({link_dir}/crops_{t}.png)" for t in meta["tags"]]
    lines += [f"Full-resolution crops of one +10 HU lesion per size, every method: {', '.join(crops)}.", ""]
    return "\n".join(lines)


def write_lesion_report(results: Dict[str, Any], out_dir: Path, report: Optional[Path]) -> List[Path]:
    """lesions.json and the d' plot under `out_dir`; the section in `report` (replaced if there)."""
    from .benchmark import replace_marked_section

    out_dir.mkdir(parents=True, exist_ok=True)
    # the per-position channel outputs and the crops' pixels stay in the --json-only parts (megabytes)
    serial = {k: v for k, v in results.items() if k not in ("records", "crops")}
    (out_dir / "lesions.json").write_text(json.dumps(serial, indent=1), encoding="utf-8")
    written = [out_dir / "lesions.json", write_dprime_plot(results, out_dir / "dprime_vs_size.png")]
    written += write_crops(results, out_dir)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        link = Path(os.path.relpath(out_dir, report.parent)).as_posix()
        replace_marked_section(report, SECTION, report_section(results, link))
        written.append(report)
    return written
