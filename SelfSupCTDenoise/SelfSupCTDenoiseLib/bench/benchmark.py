"""The benchmark: the paper's Table 1 and the pseudo-noise study on the held-out simulated subjects.

Every number in docs/BENCHMARK.md comes from `run_benchmark` (CLI: `selfsupctdenoise benchmark`).
Protocols: `ndct` (reference = the real normal-dose CT, which keeps its own noise) and `clean`
(reference = a strongly denoised NDCT with the low dose simulated from it: hides no over-smoothing).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..engine.bundle import Bundle
from ..engine.config import AdaptConfig
from ..engine.noise_level import NoiseEstimate, soft_tissue_mask, soft_tissue_std
from ..quality.metrics import compare, psnr

#: Adaptation settings shared by every adapted row (the product's defaults, fewer steps in --quick).
PAPER_GAUSSIAN_SIGMA_HU = 0.02 * 4096  # the paper's sigma 0.02 on its (HU + 1024) / 4096 scale


@dataclass
class Method:
    name: str
    bundle: str = "n2c"                       # which pre-trained bundle: n2c, n2n, n2v
    config: Optional[Dict[str, Any]] = None   # AdaptConfig overrides; None = not adapted
    oracle: bool = False
    ceiling: bool = False                     # fine-tuned on the reference (fine_tune_on_reference)
    filter: Optional[Callable[[np.ndarray, Dict[str, Any]], np.ndarray]] = None
    quick: bool = False                       # part of --quick
    scope: str = "ablation"                   # both: every tag, both protocols; ndct / clean: every tag,
                                              # that protocol; ablation: ndct protocol, ABLATION_TAGS; none: off
    steps_curve: bool = False                 # record PSNR at every teacher update


def anisotropic_diffusion(volume, context, slice_by_slice: bool = False):
    """Slicer's "Curvature Anisotropic Diffusion" module defaults, on the whole volume (3D, as a Slicer
    user runs it) or slice by slice (2D, the context every other row of the table has)."""
    import SimpleITK as sitk

    def diffuse(array, spacing):
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.SetSpacing(spacing)
        # the time step capped at what ITK says is stable for this spacing (min spacing / 2^(dimension + 1))
        step = min(0.0625, 0.95 * min(spacing) / 2 ** (len(spacing) + 1))
        return sitk.GetArrayFromImage(sitk.CurvatureAnisotropicDiffusion(image, timeStep=step,
                                                                         conductanceParameter=1.0,
                                                                         numberOfIterations=5))

    if slice_by_slice:
        return np.stack([diffuse(image, context["spacing"][:2]) for image in volume])
    return diffuse(volume, context["spacing"])


def _patch_based(volume, context):
    """SimpleITK's PatchBasedDenoising (Slicer's Simple Filters) with its defaults, slice by slice."""
    import SimpleITK as sitk

    out = np.empty(volume.shape, dtype=np.float32)
    for z, image in enumerate(volume):
        slice_image = sitk.GetImageFromArray(image.astype(np.float32))
        slice_image.SetSpacing(context["spacing"][:2])
        out[z] = sitk.GetArrayFromImage(sitk.PatchBasedDenoisingImageFilter().Execute(slice_image))
    return out


def bm3d_with_psd(volume, context):
    """BM3D for correlated noise, given the noise PSD: the input's estimated noise level and texture
    (reference-free, the same estimate the adaptation's pseudo-noise follows)."""
    import bm3d

    from ..engine.spectrum import band_index

    if not hasattr(np, "trapz"):  # bm4d 4.2 (under bm3d 4.0.3) still calls np.trapz, removed in numpy 2.4
        np.trapz = np.trapezoid

    estimate = context["estimate"]
    edges = context["bundle"].calibration["band_edges"]
    out = np.empty(volume.shape, dtype=np.float32)
    for z, image in enumerate(volume):
        shape = np.asarray(estimate.band_power)[band_index(image.shape, edges).numpy()]
        # bm3d's PSD convention: |FFT2(noise)|^2, i.e. mean(psd) = variance * number of pixels
        psd = shape / shape.mean() * estimate.std_hu ** 2 * image.size
        out[z] = bm3d.bm3d(image.astype(np.float64), psd)
    return out


def methods() -> List[Method]:
    """The rows, in table order. Adapted rows without a guard show the recipe itself."""
    raw = {"guard": False}
    return [
        Method("LDCT", filter=lambda v, c: v, quick=True, scope="both"),
        Method("N2C (pretrained)", config={"steps": 0}, quick=True, scope="both"),
        Method("N2C + paper recipe (ensemble, rescale aug.)",
               config={"pseudo_noise": "paper", "noise_level": "bundle", "augment": "rescale", **raw}, quick=True,
               scope="ndct"),
        Method("N2C + Ours w/o theta update", config={"teacher_update": False, **raw}),
        Method("N2C + scaled ensemble", config={"pseudo_noise": "scaled", "noise_level": "bundle", **raw}),
        Method("N2C + spectral ensemble", config={"pseudo_noise": "spectral", "noise_level": "bundle", **raw}),
        Method("N2C + spectral ensemble, input level",
               config={"pseudo_noise": "spectral", "noise_level": "input", **raw}, quick=True),
        Method("N2C + synthetic NPS noise, training level", config={"noise_level": "bundle", **raw}, quick=True,
               scope="ndct"),
        Method("N2C + synthetic NPS noise, input level (no guard)",
               config={"pseudo_noise": "synthetic", "noise_level": "input", **raw}, scope="both"),
        Method("N2C + fitted NPS noise, input level (no guard)",
               config={"pseudo_noise": "fitted", "noise_level": "input", **raw}, scope="both"),
        Method(f"N2C + Ours (shipped default: {AdaptConfig().pseudo_noise}, guarded)", config={}, quick=True,
               steps_curve=True, scope="both"),
        Method("N2C + Ours, one noise level everywhere (noise_level input, guarded)", config={"noise_level": "input"},
               scope="both"),
        Method("N2C + Gaussian (paper's sigma)", config={"pseudo_noise": "gaussian", "noise_level": "bundle",
                                                         "gaussian_sigma_hu": PAPER_GAUSSIAN_SIGMA_HU, **raw}),
        Method("N2C + Hist", config={"pseudo_noise": "hist", "noise_level": "bundle", **raw}),
        Method("N2C + Model+Hist", config={"pseudo_noise": "model+hist", "noise_level": "bundle", **raw}),
        Method("N2C + oracle (true independent noise)", config={**raw}, oracle=True, quick=True, scope="both"),
        Method("N2C + supervised ceiling (fine-tuned on the reference)", config={}, ceiling=True, scope="clean"),
        Method("Paper-size N2C (pretrained)", bundle="paper", config={"steps": 0}, scope="both"),
        Method("Paper-size N2C + Ours (default settings, guarded)", bundle="paper", config={}, scope="both"),
        Method("N2N (pretrained)", bundle="n2n", config={"steps": 0}),
        Method("N2N + Ours", bundle="n2n", config={}),
        Method("N2V (pretrained)", bundle="n2v", config={"steps": 0}),
        Method("N2V + Ours", bundle="n2v", config={}),
        Method("Curvature anisotropic diffusion (SimpleITK)", filter=anisotropic_diffusion, quick=True, scope="both"),
        Method("Curvature diffusion, slice by slice (2D)",
               filter=functools.partial(anisotropic_diffusion, slice_by_slice=True), scope="both"),
        Method("Patch-based denoising (SimpleITK)", filter=_patch_based),
        Method("BM3D with the noise PSD", filter=bm3d_with_psd, quick=True, scope="both"),
    ]


#: Ablation rows run at the training dose only (CPU budget).
ABLATION_TAGS = ("d25_hann",)


def _in_scope(method: Method, protocol: str, tag: str, quick: bool) -> bool:
    if (quick and not method.quick) or method.scope == "none":
        return False
    if method.scope in ("both", protocol):
        return True
    return method.scope == "ablation" and protocol == "ndct" and tag in ABLATION_TAGS


def fine_tune_on_reference(ldct: np.ndarray, reference: np.ndarray, bundle: Bundle, config: AdaptConfig) -> np.ndarray:
    """What the adaptation's budget (steps, lr, patches, augmentation, slices) can reach with the best
    possible target: the pretrained model fine-tuned on (LDCT -> reference) of this very volume. No
    pseudo-pair target is better than the reference itself, so a gain this row does not reach is out of
    reach of any pseudo-noise (protocol `clean`: the reference is the noise-free image)."""
    import torch
    import torch.nn.functional as F

    from ..engine.adapt import PatchSampler
    from ..engine.arrays import evenly_spaced
    from ..engine.inference import apply_slicewise, resolve_device

    norm = bundle.normalization
    device = resolve_device(config.device)  # where the adapted rows run
    torch.manual_seed(config.seed)
    index = evenly_spaced(len(ldct), config.adapt_slices)
    # the reference rides in the sampler's aligned channel: same crop and transform as its LDCT patch
    sampler = PatchSampler(torch.from_numpy(norm.to_model(ldct[index]))[:, None],
                           torch.from_numpy(norm.to_model(reference[index]))[:, None],
                           config.patch_size, config.augment, torch.Generator().manual_seed(config.seed))
    model = bundle.build_denoiser(device).train().requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for _ in range(config.steps):
        x, target = sampler.sample(config.batch_size)
        loss = F.mse_loss(model(x.to(device)), target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    return apply_slicewise(model, ldct, config.infer_batch, to_input=norm.to_model, from_output=norm.to_hu,
                           views=config.views)


def _case(entry: Dict[str, Any]):
    return entry.get("protocol", "ndct"), entry["subject"], entry["tag"]


def merge_results(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Combine runs made in parallel (e.g. one process per dose) into one result. Where parts
    overlap, the first part's rows, curves and estimates are kept: list a rerun first."""
    merged = {"rows": [], "curves": [], "estimator": [], "nps_ratios": {}, "band_edges": parts[0]["band_edges"],
              "meta": dict(parts[0]["meta"])}
    seen, cases = set(), set()
    for part in parts:
        for curve in part["curves"]:  # like the rows: the first part's wins
            key = ("curve", curve["protocol"], curve["tag"], curve["subject"], curve["method"])
            if key not in seen:
                seen.add(key)
                merged["curves"].append(curve)
        for entry in part["estimator"]:  # one estimate per case, like the rows
            if _case(entry) not in cases:
                cases.add(_case(entry))
                merged["estimator"].append(entry)
        for row in part["rows"]:  # a row measured twice (overlapping parts) is kept once
            key = (row["protocol"], row["tag"], row["subject"], row["method"])
            if key not in seen:
                seen.add(key)
                merged["rows"].append(row)
        merged["nps_ratios"].update(part["nps_ratios"])
    merged["meta"]["tags"] = list(dict.fromkeys(t for p in parts for t in p["meta"]["tags"]))
    merged["meta"]["protocols"] = list(dict.fromkeys(t for p in parts for t in p["meta"]["protocols"]))
    merged["meta"]["command"] = "`, then `".join(p["meta"].get("command", "?") for p in parts)
    merged["meta"]["seconds_per_part"] = [p["meta"].get("seconds") for p in parts]
    merged["meta"]["commit"] = ", ".join(dict.fromkeys(p["meta"]["commit"] for p in parts))
    merged["meta"]["date"] = max(p["meta"]["date"] for p in parts)  # the newest part's
    known = merged["meta"]["bundles"] = {}
    for index, part in enumerate(parts, 1):  # parts run with another bundle of the same role stay visible
        for role, bundle in part["meta"]["bundles"].items():
            if all(b["sha256"] != bundle["sha256"] for b in known.values()):
                known[role if role not in known else f"{role}, part {index}"] = bundle
    return merged


def pseudo_noise_band_ratios(volume: np.ndarray, real_noise: np.ndarray, bundle: Bundle, base: AdaptConfig,
                             estimate: NoiseEstimate) -> Dict[str, List[float]]:
    """Band power of each pseudo-noise over that of the real noise of this volume (1 = same NPS)."""
    import torch

    from ..engine.adapt import PatchSampler
    from ..engine.arrays import evenly_spaced
    from ..engine.run import prepare_pseudo_pairs
    from ..engine.spectrum import patch_band_power

    norm = bundle.normalization
    generator = torch.Generator().manual_seed(0)
    index = evenly_spaced(len(volume), base.adapt_slices)
    # the real noise over patches mostly of soft tissue, where the pseudo-noise level is set (CT
    # noise is not stationary: lower in air, higher behind bone)
    real_sampler = PatchSampler(torch.from_numpy(norm.to_model(volume[index]))[:, None],
                                torch.from_numpy(norm.noise_to_model(real_noise[index]))[:, None],
                                base.patch_size, "rot90flip", generator)
    x, noise = real_sampler.sample(1024)
    soft = np.array([soft_tissue_mask(patch).mean() for patch in norm.to_hu(x.numpy()[:, 0])])
    real = patch_band_power(noise[soft >= 0.5] if (soft >= 0.5).sum() >= 32 else noise)
    ratios = {}
    for name, overrides in {"paper ensemble": {"pseudo_noise": "paper", "noise_level": "bundle"},
                            "scaled ensemble": {"pseudo_noise": "scaled", "noise_level": "bundle"},
                            "spectral ensemble (input level)": {"pseudo_noise": "spectral",
                                                                "noise_level": "input"},
                            "synthetic NPS (input level)": {"pseudo_noise": "synthetic", "noise_level": "input"},
                            "fitted NPS (input level)": {"pseudo_noise": "fitted", "noise_level": "input"},
                            "Gaussian (paper's sigma)": {"pseudo_noise": "gaussian", "noise_level": "bundle",
                                                         "gaussian_sigma_hu": PAPER_GAUSSIAN_SIGMA_HU},
                            "Hist": {"pseudo_noise": "hist", "noise_level": "bundle"}}.items():
        config = base.with_(**overrides)
        sampler, source = prepare_pseudo_pairs(volume, bundle, config, torch.device("cpu"),
                                               torch.Generator().manual_seed(1), estimate)
        x, model_noise = sampler.sample(256)
        ratios[name] = (patch_band_power(source.draw(model_noise, x.shape, x.device)) / real).tolist()
    return ratios


def noise_peak(noise: np.ndarray, reference: np.ndarray) -> float:
    """NPS peak frequency (cycles/pixel) of `noise` over the reference's body."""
    from ..data.dataset import noise_nps_summary

    return noise_nps_summary(noise, reference > -500, (1.0, 1.0))["peak_px"]


def texture_left(output: np.ndarray, ldct: np.ndarray, reference: np.ndarray, uniform: np.ndarray,
                 ndct_noise_sd: Optional[float], input_peak: Optional[float] = None) -> Dict[str, Optional[float]]:
    """Over-smoothing, from what remains (output - reference) beside the input's noise (ldct - reference).

    `noise_vs_ndct`: the SD left in uniform soft tissue over the normal-dose scan's own noise SD (about 1:
    as grainy as a normal-dose scan of this patient; well below 1: smoother than any real scan).
    `nps_peak_ratio`: the NPS peak frequency of what remains over that of the input's noise (about 1:
    the grain keeps its size, as vendor deep-learning reconstructions keep it; below 1: a coarser,
    blotchy or waxy texture). `input_peak`: that of the input's noise where already measured (one per case).
    """
    left = output - reference
    sd = float(left[uniform].std()) if uniform.any() else None
    peak_in = noise_peak(ldct - reference, reference) if input_peak is None else input_peak
    peak_left = noise_peak(left, reference)
    return {"noise_vs_ndct": sd / ndct_noise_sd if sd is not None and ndct_noise_sd else None,
            "nps_peak_ratio": peak_left / peak_in if peak_in > 0 else None}


def _strength_rows(row: Dict[str, Any], ldct: np.ndarray, full: np.ndarray, reference: np.ndarray,
                   uniform: np.ndarray, ndct_noise_sd: Optional[float], input_peak: float) -> List[Dict[str, Any]]:
    """The shipped default at each named strength: blends of the same run, no new adaptation."""
    from ..engine.strength import STRENGTH_LEVELS, strength_blend
    from ..quality.hu_shift import hu_shift
    from ..quality.method_noise import method_noise_score

    out = []
    for name, value in STRENGTH_LEVELS.items():
        if value == 1.0:
            continue
        blended = strength_blend(ldct, full, value)
        out.append({**row, "method": f"{row['method']}, strength {name} ({value})", "seconds": 0.0,
                    **compare(blended, reference),
                    "hu_shift": hu_shift(reference, blended, uniform)["overall"] if uniform.any() else None,
                    "method_noise": method_noise_score(ldct, blended)["score"],
                    "noise_sd_uniform": float((blended - reference)[uniform].std()) if uniform.any() else None,
                    **texture_left(blended, ldct, reference, uniform, ndct_noise_sd, input_peak)})
    return out


def run_benchmark(dataset: Path, bundles: Dict[str, Bundle], *, quick: bool, tags: Sequence[str],
                  protocols: Sequence[str], steps: int, log: Callable[[str], None] = print,
                  rows_filter: Optional[Sequence[str]] = None, strengths: bool = True,
                  split: str = "test") -> Dict[str, Any]:
    import SimpleITK as sitk

    from ..data.dataset import load_manifest, subject_paths
    from ..engine.inference import describe_device, resolve_device
    from ..engine.run import denoise_array, estimate_input_noise
    from ..quality.hu_shift import hu_shift
    from ..quality.method_noise import method_noise_score
    from ..quality.regions import uniform_tissue_mask

    benchmark_start = time.perf_counter()
    commit = _git_commit()  # the code that ran, even if the tree moves on during a long run
    manifest = load_manifest(dataset)
    entries = {s["key"]: s for s in manifest["subjects"] if s["split"] == split}
    subjects = list(entries)
    base = AdaptConfig(steps=steps)
    rows: List[Dict[str, Any]] = []
    curves: List[Dict[str, Any]] = []
    estimator: List[Dict[str, Any]] = []
    nps_ratios: Dict[str, Any] = {}
    if isinstance(rows_filter, str):
        rows_filter = [rows_filter]
    chosen = [m for m in methods() if m.bundle in bundles
              and (not rows_filter or any(text in m.name for text in rows_filter))]
    for protocol in protocols:
        for tag in tags:
            for key in subjects:
                ldct_path, reference_path = subject_paths(dataset, key, tag, clean=protocol == "clean")
                if not ldct_path.exists():
                    continue
                image = sitk.ReadImage(str(ldct_path))
                ldct = sitk.GetArrayFromImage(image).astype(np.float32)
                reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path))).astype(np.float32)
                spacing = image.GetSpacing()
                estimate = estimate_input_noise(ldct, bundles["n2c"], base)
                estimated = estimate.std_hu
                true_std = soft_tissue_std(ldct, ldct - reference)
                oracle_noise = None
                other_ldct, other_reference = subject_paths(dataset, key, tag, clean=protocol != "clean")
                if other_ldct.exists():  # the other protocol's noise: same physics, independent draw
                    oracle_noise = (sitk.GetArrayFromImage(sitk.ReadImage(str(other_ldct))).astype(np.float32)
                                    - sitk.GetArrayFromImage(sitk.ReadImage(str(other_reference))).astype(np.float32))
                estimator.append({"protocol": protocol, "subject": key, "tag": tag, "true_std_hu": true_std,
                                  "estimated_std_hu": estimated, "sharpness": estimate.sharpness,
                                  "error_percent": 100 * (estimated - true_std) / true_std})
                if protocol == "clean":  # the input's noise is all inserted: the NPS to match is known
                    nps_ratios[f"{key}/{tag}"] = pseudo_noise_band_ratios(ldct, ldct - reference, bundles["n2c"],
                                                                          base, estimate)
                uniform = uniform_tissue_mask(reference, max_slices=16)
                ndct_noise_sd = entries[key].get("ndct_noise_sd_hu")
                input_peak = noise_peak(ldct - reference, reference)
                for method in chosen:
                    if (method.oracle and oracle_noise is None) or not _in_scope(method, protocol, tag, quick):
                        continue
                    started = time.perf_counter()
                    curve: List[List[float]] = []
                    info: Dict[str, Any] = {}
                    if method.filter is not None:
                        output = method.filter(ldct, {"spacing": spacing, "bundle": bundles["n2c"],
                                                      "estimate": estimate})
                    elif method.ceiling:
                        output = fine_tune_on_reference(ldct, reference, bundles[method.bundle],
                                                        base.with_(**method.config))
                    else:
                        bundle = bundles[method.bundle]
                        config = base.with_(**method.config)

                        def record(step, model, bundle=bundle, views=config.views):
                            from ..engine.inference import apply_slicewise

                            norm = bundle.normalization
                            out = apply_slicewise(model, ldct, 4, to_input=norm.to_model, from_output=norm.to_hu,
                                                  views=views)
                            curve.append([step, psnr(out, reference)])

                        result = denoise_array(ldct, bundle, config,
                                               on_teacher_update=record if method.steps_curve else None,
                                               oracle_noise=oracle_noise if method.oracle else None)
                        output, info = result.denoised, result.info["run"]
                    elapsed = time.perf_counter() - started
                    guard = info.get("guard") or {}
                    if guard.get("fell_back") and "removed_std_adapted_hu" in guard:
                        # what the guard turned down, to judge the guard itself (not timed)
                        unguarded = denoise_array(ldct, bundle, config.with_(guard=False)).denoised
                        guard = {**guard, "psnr_soft_unguarded": psnr(unguarded, reference)}
                    row = {"protocol": protocol, "tag": tag, "subject": key, "method": method.name,
                           "seconds": round(elapsed, 2), **compare(output, reference),
                           "hu_shift": hu_shift(reference, output, uniform)["overall"] if uniform.any() else None,
                           "method_noise": method_noise_score(ldct, output)["score"],
                           "guard_fell_back": bool(guard.get("fell_back", False)),
                           **({"guard": guard} if guard else {}),
                           "noise_sd_uniform": float((output - reference)[uniform].std()) if uniform.any() else None,
                           **texture_left(output, ldct, reference, uniform, ndct_noise_sd, input_peak)}
                    rows.append(row)
                    if method.steps_curve and strengths:
                        rows += _strength_rows(row, ldct, result.full_strength, reference, uniform, ndct_noise_sd,
                                               input_peak)
                    if curve:
                        curves.append({"protocol": protocol, "tag": tag, "subject": key, "method": method.name,
                                       "points": curve})
                    log(f"{protocol:5} {tag:10} {key:12} {method.name:52} PSNR soft {row['psnr_soft']:6.2f} "
                        f"SSIM {row['ssim_soft']:.4f}  {elapsed:6.1f} s")
    device = describe_device(resolve_device(base.device))
    seconds = round(time.perf_counter() - benchmark_start)
    return {"rows": rows, "curves": curves, "estimator": estimator, "nps_ratios": nps_ratios,
            "band_edges": bundles["n2c"].calibration["band_edges"],
            "meta": {"quick": quick, "steps": steps, "seconds": seconds, "tags": list(tags), "protocols": list(protocols),
                     "subjects": subjects, "split": split, "device": device, "commit": commit,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "bundles": {k: {"path": str(b.path), "sha256": b.sha256, "profile": b.profile.name}
                                 for k, b in bundles.items()},
                     "python": platform.python_version()}}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _mean_of(rows: Sequence[Dict[str, Any]], key: str) -> str:
    """Mean of a measure over the rows that have it ('-' where none has: older results)."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return f"{np.mean(values):.2f}" if values else "-"


def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def write_report(results: Dict[str, Any], out_dir: Path, command: str) -> Path:
    """docs/BENCHMARK.md, benchmark.json and the PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.json").write_text(json.dumps(results, indent=1))
    meta, rows = results["meta"], results["rows"]
    order = {m.name: i for i, m in enumerate(methods())}
    names = sorted(dict.fromkeys(r["method"] for r in rows if "strength" not in r["method"]),
                   key=lambda name: order.get(name, len(order)))
    lines = [
        "# Benchmark", "",
        f"Generated by `{command}` at commit `{meta['commit']}` on {meta['date']}, device: {meta['device']}; "
        f"{'quick' if meta['quick'] else 'full'} mode, {meta['steps']} adaptation steps; "
        f"{'validation' if meta.get('split') == 'validation' else 'held-out'} subjects: "
        f"{', '.join(meta['subjects'])}. Raw numbers: `benchmark.json`. Data and simulated doses: `DATA.md`.", "",
        "PSNR/SSIM in the soft-tissue window ([-160, 240] HU, data range 400) and over the full range "
        "([-1024, 3072] HU, data range 4096), averaged per subject, then mean ± std across subjects. "
        "HU shift: mean-HU change against the reference over uniform soft tissue of the reference. Method noise: "
        "structure in the removed part (see README; > 0.3 = removes detail). Tags: d25/d12/d50 = quarter/eighth/half "
        "dose, hann/ramlak = reconstruction filter; which ones a bundle saw in pre-training: its manifest's "
        "`training.subjects` (docs/DATA.md; the shipped lite: d12 and Ram-Lak never). Protocol `ndct`: "
        "reference = the real NDCT (noisy itself); `clean`: reference = the NDCT denoised by methods that are "
        "not rows here (mean of 3D non-local means and 3D total variation, data/clean_reference.py) with the low "
        "dose simulated from it. PSNR edges: PSNR soft over the reference's strongest edges only (per slice "
        "the top tenth of the body's gradient): smoothing cannot win it. Over-smoothing, from what remains "
        "(result - reference): *noise / NDCT*, its SD in uniform soft tissue over the normal-dose scan's own "
        "noise SD (about 1: as grainy as a normal-dose scan of this patient; well below 1: smoother than any "
        "real scan, the waxy look), and *NPS peak*, the peak frequency of its noise power spectrum over that "
        "of the input's noise (about 1: the grain keeps its size; below 1: coarser, blotchy texture).", "",
        "Bundles: " + "; ".join(f"{k.upper()} `{os.path.relpath(b['path'])}` ({b['profile']}, manifest sha256 {b['sha256'][:12]})"
                                 for k, b in meta["bundles"].items()) + ".", ""]
    if meta.get("seconds_per_part"):
        parts = meta["seconds_per_part"]
        minutes = ", ".join(f"{s / 60:.0f} min" for s in parts)
        lines += [(f"Run as {len(parts)} parts in parallel (one torch thread each, sharing a 2-core machine; wall "
                   f"time per part: {minutes}), merged" if len(parts) > 1 else
                   f"Run as one part (one torch thread, on a 2-core machine shared with other jobs; wall time "
                   f"{minutes}), written") + " with `selfsupctdenoise benchmark --merge`: the s/volume column "
                  "includes that sharing.", ""]
    for protocol in meta["protocols"]:
        for tag in meta["tags"]:
            subset = [r for r in rows if r["protocol"] == protocol and r["tag"] == tag]
            if not subset:
                continue
            lines += [f"## Protocol `{protocol}`, {tag}", "",
                      "| method | PSNR soft | PSNR edges | SSIM soft | PSNR full | SSIM full | HU shift | method noise | "
                      "noise / NDCT | NPS peak | s/volume | " + " | ".join(f"{s} PSNR soft" for s in meta["subjects"]) + " |",
                      "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(meta["subjects"])]
            for name in names:
                mine = [r for r in subset if r["method"] == name]
                if not mine:
                    continue
                per_subject = {r["subject"]: r["psnr_soft"] for r in mine}
                lines.append(
                    f"| {name} | {_mean_std([r['psnr_soft'] for r in mine])} | "
                    f"{_mean_std([r.get('psnr_edges') for r in mine])} | "
                    f"{np.mean([r['ssim_soft'] for r in mine]):.4f} | {_mean_std([r['psnr_full'] for r in mine])} | "
                    f"{np.mean([r['ssim_full'] for r in mine]):.4f} | {_mean_std([r['hu_shift'] for r in mine])} | "
                    f"{np.mean([r['method_noise'] for r in mine]):+.2f} | {_mean_of(mine, 'noise_vs_ndct')} | "
                    f"{_mean_of(mine, 'nps_peak_ratio')} | {np.mean([r['seconds'] for r in mine]):.1f} | "
                    + " | ".join(f"{per_subject[s]:.2f}" if s in per_subject else "-" for s in meta["subjects"]) + " |")
            lines.append("")
    gains = _gains(rows)
    if gains:
        lines += ["## Gain of adaptation over the pretrained model (PSNR soft, dB, per subject)", "",
                  "The supervised ceiling row (protocol `clean`) fine-tunes the pretrained model on the volume's own "
                  "noise-free reference with the adaptation's budget: what the true target reaches in these steps, "
                  "a practical upper mark for any pseudo-noise (not a strict bound: it has no teacher updates "
                  "or learning-rate schedule).", "",
                  "| protocol | tag | method | " + " | ".join(meta["subjects"]) + " | min |",
                  "|---|---|---|" + "---|" * (len(meta["subjects"]) + 1)]
        rank = {name: i for i, name in enumerate(names)}
        for (protocol, tag, name), per_subject in sorted(gains.items(), key=lambda item: (
                meta["protocols"].index(item[0][0]), meta["tags"].index(item[0][1]), rank.get(item[0][2], len(rank)))):
            lines.append(f"| {protocol} | {tag} | {name} | "
                         + " | ".join(f"{per_subject[s]:+.2f}" if s in per_subject else "-" for s in meta["subjects"])
                         + f" | {min(per_subject.values()):+.2f} |")
        lines.append("")
    graded = [r for r in rows if "shipped default" in r["method"] and r["protocol"] == "ndct"]
    if any("strength" in r["method"] for r in graded):
        lines += ["## The shipped default per strength level (protocol `ndct`; blends of the same runs)", "",
                  "Noise SD: std of (output - reference) over uniform soft tissue of the reference.", "",
                  "| tag | strength | PSNR soft | SSIM soft | noise SD (HU) | HU shift | method noise |",
                  "|---|---|---|---|---|---|---|"]
        for tag in meta["tags"]:
            for name in dict.fromkeys(r["method"] for r in graded if r["tag"] == tag):
                mine = [r for r in graded if r["tag"] == tag and r["method"] == name]
                level = name.split("strength ")[-1] if "strength" in name else "high (1.0)"
                lines.append(f"| {tag} | {level} | {_mean_std([r['psnr_soft'] for r in mine])} | "
                             f"{np.mean([r['ssim_soft'] for r in mine]):.4f} | "
                             f"{_mean_std([r.get('noise_sd_uniform') for r in mine])} | "
                             f"{_mean_std([r['hu_shift'] for r in mine])} | {np.mean([r['method_noise'] for r in mine]):+.2f} |")
        lines.append("")
    guarded = [r for r in rows if "guarded" in r["method"] and "strength" not in r["method"]]
    if guarded:
        lines += [f"The guard fell back to the pretrained model in {sum(r['guard_fell_back'] for r in guarded)} of "
                  f"{len(guarded)} runs of the shipped default.", ""]
    if results["estimator"]:
        lines += ["## Reference-free noise estimate of the input vs the true inserted noise (soft tissue)", "",
                  "`noise_level.estimate_noise` on the LDCT alone. Protocol `clean`: the inserted noise is all the "
                  "noise the input has, so this is the estimator's error. Protocol `ndct`: the input also carries the "
                  "NDCT's own noise (DATA.md), which the estimate includes and the 'true' column does not. Sharpness: "
                  "the texture picked (0 = the training kernel's, 1 = a ramp).", "",
                  "| protocol | subject | tag | true std (HU) | estimated (HU) | error | sharpness |",
                  "|---|---|---|---|---|---|---|"]
        for e in sorted(results["estimator"], key=lambda e: e.get("protocol", "ndct")):
            lines.append(f"| {e.get('protocol', 'ndct')} | {e['subject']} | {e['tag']} | {e['true_std_hu']:.1f} | "
                         f"{e['estimated_std_hu']:.1f} | {e['error_percent']:+.0f}% | {e.get('sharpness', float('nan')):.2f} |")
        lines.append("")
    if results["nps_ratios"]:
        edges = results["band_edges"]
        bands = [f"{a:.3g}-{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
        lines += ["## Pseudo-noise NPS over the real noise NPS, per radial band (cycles/pixel; 1.00 = match)", "",
                  "Protocol `clean` (the inserted noise is the input's whole noise); mean over the held-out subjects, "
                  "doses and filters; per case in `benchmark.json`.", "",
                  "| pseudo-noise | " + " | ".join(bands) + " | worst |", "|---|" + "---|" * (len(bands) + 1)]
        kinds = next(iter(results["nps_ratios"].values())).keys()
        for kind in kinds:
            ratios = np.mean([case[kind] for case in results["nps_ratios"].values()], axis=0)
            worst = float(np.max(np.abs(ratios - 1)))
            lines.append(f"| {kind} | " + " | ".join(f"{r:.2f}" for r in ratios) + f" | {worst:.0%} off |")
        lines.append("")
        fig, ax = plt.subplots(figsize=(7, 4))
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        for kind in kinds:
            ax.plot(centres, np.mean([case[kind] for case in results["nps_ratios"].values()], axis=0), marker="o",
                    label=kind)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("radial frequency (cycles/pixel)")
        ax.set_ylabel("NPS pseudo / NPS real")
        ax.legend(fontsize=7)
        ax.set_title("Pseudo-noise realism (held-out subjects)")
        fig.tight_layout()
        fig.savefig(out_dir / "benchmark_nps_ratio.png", dpi=110)
        plt.close(fig)
        lines += ["![NPS ratio](benchmark_nps_ratio.png)", ""]
    if results["curves"]:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        # colour per subject, line style per tag, faint for protocol ndct: two dozen curves stay readable
        colours = {s: f"C{i}" for i, s in enumerate(meta["subjects"])}
        styles = {t: ["-", "--", ":", "-."][i % 4] for i, t in enumerate(meta["tags"])}
        for c in results["curves"]:
            points = np.asarray(c["points"])
            ax.plot(points[:, 0], points[:, 1], color=colours.get(c["subject"]), linestyle=styles.get(c["tag"], "-"),
                    alpha=0.45 if c["protocol"] == "ndct" else 1.0, label=f"{c['subject']} {c['tag']} ({c['protocol']})")
        ax.set_xlabel("adaptation step")
        ax.set_ylabel("PSNR soft (dB)")
        ax.set_title("Shipped default: PSNR of the teacher vs steps")
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(out_dir / "benchmark_psnr_vs_steps.png", dpi=110)
        plt.close(fig)
        lines += ["![PSNR vs steps](benchmark_psnr_vs_steps.png)", ""]
    path = out_dir / "BENCHMARK.md"
    kept = _marked_sections(path.read_text(encoding="utf-8")) if path.exists() else []
    path.write_text("\n".join(lines + kept), encoding="utf-8")  # sections other commands wrote (benchmark-lesions) stay
    return path


def _marker(name: str, end: bool = False) -> str:
    return f"<!-- section {name} {'end' if end else 'start'}: written by its own command -->"


def _marked_sections(text: str) -> List[str]:
    return re.findall(r"<!-- section \S+ start: .*? -->.*?<!-- section \S+ end: .*? -->\n?", text, flags=re.S)


def replace_marked_section(path: Path, name: str, body: str) -> None:
    """Write `body` between the markers of section `name` of a markdown report: replaced where it
    is, appended otherwise; `write_report` keeps such sections when it rewrites the report."""
    block = f"{_marker(name)}\n{body.rstrip()}\n{_marker(name, end=True)}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = text.find(_marker(name)), text.find(_marker(name, end=True))
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(_marker(name, end=True)):].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    path.write_text(text, encoding="utf-8")


def _gains(rows: List[Dict[str, Any]]) -> Dict[Any, Dict[str, float]]:
    gains: Dict[Any, Dict[str, float]] = {}
    for r in rows:
        if " + " not in r["method"] or "strength" in r["method"]:
            continue
        # against the same bundle's pretrained row ("N2C + ..." -> "N2C (pretrained)")
        pretrained = r["method"].split(" + ")[0] + " (pretrained)"
        base = next((b for b in rows if b["method"] == pretrained and b["subject"] == r["subject"]
                     and b["tag"] == r["tag"] and b["protocol"] == r["protocol"]), None)
        if base is not None:
            gains.setdefault((r["protocol"], r["tag"], r["method"]), {})[r["subject"]] = r["psnr_soft"] - base["psnr_soft"]
    return gains
