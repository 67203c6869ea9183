"""The paired LDCT/NDCT dataset simulated from the real CT of `sources.py`, and the demo sample.

`build_dataset` writes, per subject, the normal-dose CT (`ndct.nrrd`), low-dose versions made by
projection-domain noise insertion (`ldct_<tag>.nrrd`, see `lowdose.py`), optionally a "clean
reference" protocol (`clean.nrrd` = the NDCT denoised by methods the benchmark does not compare, see
`clean_reference.py`, and `clean_ldct_<tag>.nrrd` simulated from it), and a `manifest.json` with the
split, provenance, licences and the measured noise.

Everything here is optional tooling for experiments and the demo sample: astra-toolbox and bm3d
(the `data` / `bench` extras) are imported only when a dataset is built.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..engine.arrays import evenly_spaced, round_into
from ..errors import InputError
from .clean_reference import consensus_reference
from .lowdose import (DEFAULT_I0_FULL, DEFAULT_SIGMA_E, MU_WATER_PER_MM, REF_SPACING_MM, REF_VIEWS, DoseSpec,
                      ScanGeometry, i0_for, make_rng, simulate_volume_multi)
from .sources import SPLITS, SUBJECTS, Log, Subject, fetch_subject, load_ndct, print_line

#: Low-dose protocols: the training dose, two unseen doses and another reconstruction filter.
TRAIN_TAG = "d25_hann"
DEFAULT_TAGS = ("d25_hann", "d12_hann", "d50_hann", "d25_ramlak")
DEFAULT_MAX_SLICES = 40
#: How the full dose of each subject is set (see `calibrate_i0`).
DOSE_REFERENCES = ("ndct", "fixed")
QUICK_MAX_SLICES = 4
DEFAULT_OUT = Path("data/sim")
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Sample"
#: ndct_denoised: the NDCT denoised with BM3D (the `clean` protocol's reference): the NDCT of the
#: sample carries ~28 HU of its own noise, which the tool measures and removes with the rest
SAMPLE_FILES = {"ldct": "sample_ldct_d25_hann.nrrd", "ndct": "sample_ndct.nrrd",
                "ndct_denoised": "sample_ndct_denoised.nrrd"}


def body_area(volume_hu: np.ndarray) -> np.ndarray:
    """Pixels per slice inside the body outline (> -500 HU, holes such as the lungs filled)."""
    from scipy import ndimage

    return np.array([ndimage.binary_fill_holes(s > -500).sum() for s in np.asarray(volume_hu)])


def select_slices(image, max_slices: int, spread: bool = False):
    """`max_slices` slices centred on the body's z extent (geometry kept by SimpleITK): contiguous, or
    with `spread` every k-th slice so that they span that extent (a regular grid k times coarser in z:
    more anatomy for the same simulation time, for training sets).

    The extent is where a slice holds at least half the largest body cross-section, so slices that
    only graze the body (shoulders, thighs) are not what the slab is centred on.
    """
    import SimpleITK as sitk

    nz = image.GetSize()[2]
    if nz <= max_slices:
        return image
    area = body_area(sitk.GetArrayViewFromImage(image))
    inside = np.flatnonzero(area >= 0.5 * area.max())
    first, last = (inside[0], inside[-1]) if inside.size else (0, nz - 1)
    step = max(1, (last - first + 1) // max_slices) if spread else 1
    span = step * (max_slices - 1) + 1
    start = int(np.clip((first + last) // 2 - span // 2, 0, nz - span))
    return image[:, :, start:start + span:step]


def downsample2(image):
    """2x in-plane block average (quick mode): geometry kept, spacing doubled."""
    import SimpleITK as sitk

    return sitk.BinShrink(image, [2, 2, 1])


# ---------------------------------------------------------------------------------------------
# Measurements

def inserted_noise_stats(ldct: np.ndarray, ndct: np.ndarray) -> Dict[str, float]:
    """Std and mean of LDCT - NDCT in soft tissue (HU), and its lag-1 autocorrelation in the body."""
    from ..engine.noise_level import soft_tissue_mask
    from ..quality.nps import lag1_autocorrelation

    noise = np.asarray(ldct, np.float64) - np.asarray(ndct, np.float64)
    mask = np.stack([soft_tissue_mask(s) for s in np.asarray(ndct, np.float32)])
    body = np.asarray(ndct) > -500
    values = noise[mask] if mask.sum() > 100 else noise[body]
    return {"noise_std_hu": float(values.std()), "mean_shift_hu": float(values.mean()),
            "lag1_autocorr": lag1_autocorrelation(noise, body)}


def uniform_boxes(volume_hu: np.ndarray, spacing_xyz: Sequence[float], n: int = 5) -> list:
    """The `n` flattest 15 mm soft-tissue boxes of a volume (`quality.regions.find_uniform_regions`)."""
    from ..quality.regions import find_uniform_regions

    return find_uniform_regions(np.asarray(volume_hu, np.float32), spacing_xyz, n=n)


def boxes_sd(volume_hu: np.ndarray, boxes: Sequence) -> Optional[float]:
    """Root-mean-square SD (HU) of a volume over boxes, or None without boxes."""
    from ..quality.regions import region_stats

    if not boxes:
        return None
    return float(np.sqrt(np.mean([region_stats(np.asarray(volume_hu, np.float32), b)["sd"] ** 2 for b in boxes])))


def uniform_region_std(volume_hu: np.ndarray, spacing_xyz: Sequence[float], n: int = 5) -> Optional[float]:
    """SD (HU) in the `n` flattest 15 mm soft-tissue boxes: noise plus whatever structure they hold."""
    return boxes_sd(volume_hu, uniform_boxes(volume_hu, spacing_xyz, n))


def structure_corrected_sd(ndct: np.ndarray, clean: np.ndarray, boxes: Sequence) -> Optional[float]:
    """NDCT noise SD in the boxes with the structure the clean image keeps subtracted in variance:
    sqrt(sd_ndct^2 - sd_clean^2). Small boxes in chest or zoomed images otherwise count anatomy."""
    sd_n, sd_c = boxes_sd(ndct, boxes), boxes_sd(clean, boxes)
    if sd_n is None:
        return None
    return float(np.sqrt(max(sd_n ** 2 - sd_c ** 2, 0.25 * sd_n ** 2)))


def noise_nps_summary(noise: np.ndarray, body: np.ndarray, spacing_yx: Sequence[float],
                      roi: int = 64) -> Dict[str, object]:
    """Radial NPS of a noise-only image in mm^-1 and cycles/pixel, with its peak and band fractions."""
    from ..quality.nps import band_fractions, extract_rois, mean_frequency, peak_frequency, radial_nps

    roi = min(roi, noise.shape[-1] // 2, noise.shape[-2] // 2)
    try:
        rois = extract_rois(noise, roi, body, stride=roi // 2)
    except ValueError:
        rois = extract_rois(noise, roi, None, stride=roi // 2)
    nps_mm, f_mm = radial_nps(rois, spacing_yx)
    nps_px, f_px = radial_nps(rois, (1.0, 1.0))
    edges = [0.0, 0.125, 0.25, 0.375, 0.5]
    return {"roi": roi, "n_rois": int(len(rois)), "variance_hu2": float(rois.var()),
            "freq_mm": f_mm.tolist(), "nps_mm": nps_mm.tolist(), "freq_px": f_px.tolist(), "nps_px": nps_px.tolist(),
            "peak_mm": peak_frequency(nps_mm, f_mm), "peak_px": peak_frequency(nps_px, f_px),
            "mean_freq_px": mean_frequency(nps_px, f_px),
            "band_edges_px": edges, "band_fractions_px": band_fractions(nps_px, f_px, edges).tolist()}


# ---------------------------------------------------------------------------------------------
# Building

def _write(array: np.ndarray, reference, path: Path) -> None:
    """int16 HU (rounded, like scanner output), gzip NRRD, reference geometry, atomic."""
    import SimpleITK as sitk

    from ..files.volumes import write_volume

    image = sitk.GetImageFromArray(round_into(array, np.int16))
    image.CopyInformation(reference)
    write_volume(image, path, compress=True)


def clean_reference(ndct: np.ndarray, sigma_hu: float, slices: Optional[Sequence[int]] = None) -> np.ndarray:
    """The NDCT strongly denoised slice by slice with BM3D (white-noise model at `sigma_hu`): used to
    measure the NDCT's own noise (`structure_corrected_sd`), no longer as the `clean` reference.
    Only `slices` are denoised where given (the others are copied): a 512 x 512 slice takes seconds."""
    try:
        import bm3d
    except ImportError:
        raise InputError("Building the dataset needs the bm3d package (pip install bm3d==4.0.3).") from None

    out = np.array(ndct, dtype=np.float32)
    for z in range(len(out)) if slices is None else slices:
        out[z] = bm3d.bm3d(out[z], sigma_psd=float(sigma_hu))
    return out


def _probe_inserted_std(ndct: np.ndarray, spacing: Sequence[float], i0_full: float, sigma_e: float,
                        seed: int, n_slices: int = 4) -> float:
    """Soft-tissue SD of the training-dose noise `i0_full` inserts, on a few evenly spaced slices."""
    index = evenly_spaced(len(ndct), n_slices)
    spec = DoseSpec.from_tag(TRAIN_TAG)
    probe = ndct[index]
    ldct = simulate_volume_multi(probe, spacing, [spec], seed, i0_full, sigma_e)[spec.tag]
    return inserted_noise_stats(ldct, probe)["noise_std_hu"]


#: Per-subject full dose stays within this factor of the reference I0: a noisier NDCT (often a
#: sharper kernel or thinner slices than the Hann-filtered insertion) would otherwise be matched by
#: photon-starved, streaky projections.
I0_SCALE_LIMIT = 3.0


def calibrate_i0(ndct: np.ndarray, spacing: Sequence[float], ndct_noise_sd: Optional[float],
                 opts: "BuildOptions") -> Tuple[float, Dict[str, object]]:
    """Full-dose I0 for one subject.

    'fixed': opts.i0_full for everyone (one dose; noise then follows each body's attenuation).
    'ndct': I0 such that the training dose inserts sqrt(1/dose - 1) times the NDCT's own noise SD,
    i.e. `dose` is a fraction of *this scan's* dose, as in the AAPM data (each quarter-dose image is a
    quarter of its own, tube-current-modulated, full dose). Two probe simulations on a few slices
    (the noise is not exactly ~ 1/sqrt(I0) at low counts); the result is kept within
    I0_SCALE_LIMIT of opts.i0_full either way.
    """
    info: Dict[str, object] = {"dose_reference": opts.dose_reference}
    if opts.dose_reference == "fixed" or not ndct_noise_sd:
        return opts.i0_full, info
    dose = DoseSpec.from_tag(TRAIN_TAG).dose
    target = ndct_noise_sd * np.sqrt(1.0 / dose - 1.0)
    scale, probes = 1.0, []
    for _ in range(2):
        probe = _probe_inserted_std(ndct, spacing, opts.i0_full * scale, opts.sigma_e, opts.seed)
        probes.append(round(probe, 2))
        scale = float(np.clip(scale * (probe / target) ** 2, 1.0 / I0_SCALE_LIMIT, I0_SCALE_LIMIT))
    info.update(target_train_noise_hu=round(float(target), 2), probe_noise_hu=probes, i0_scale=round(scale, 4),
                limited=bool(scale in (1.0 / I0_SCALE_LIMIT, I0_SCALE_LIMIT)))
    return opts.i0_full * scale, info


def build_subject(subject: Subject, opts: "BuildOptions", log: Log = print_line) -> Dict[str, object]:
    """Write one subject's files under opts.out_dir/<key>/ and return its manifest entry."""
    import SimpleITK as sitk

    start = time.perf_counter()
    source = fetch_subject(subject, opts.cache_dir, log, opts.source_dir)
    image = load_ndct(source)
    original = {"size_xyz": list(image.GetSize()), "spacing_xyz": [round(s, 6) for s in image.GetSpacing()]}
    max_slices = opts.max_slices or (QUICK_MAX_SLICES if opts.quick else DEFAULT_MAX_SLICES)
    image = select_slices(image, max_slices, opts.spread)
    if opts.quick and max(image.GetSize()[:2]) > 256:
        image = downsample2(image)
    ndct = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = image.GetSpacing()
    specs = [DoseSpec.from_tag(t) for t in opts.tags]
    geometry = ScanGeometry.for_grid(ndct.shape[1:], (spacing[1], spacing[0]))
    folder = Path(opts.out_dir) / subject.key
    folder.mkdir(parents=True, exist_ok=True)
    _write(ndct, image, folder / "ndct.nrrd")

    # The NDCT's own noise: SD in its flattest soft-tissue boxes, less the structure BM3D keeps there.
    # (A measurement for the dose calibration, unchanged since the shipped bundles' training data were
    # built; the `clean` protocol's reference itself is made by other methods, below.)
    boxes = uniform_boxes(ndct, spacing)
    ndct_box_sd = boxes_sd(ndct, boxes)
    bm3d_denoised = clean_reference(ndct, opts.clean_sigma_factor * (ndct_box_sd or 10.0),
                                    sorted({z for b in boxes for z in range(b.z0, b.z1)}))
    ndct_noise_sd = structure_corrected_sd(ndct, bm3d_denoised, boxes)
    del bm3d_denoised
    i0_full, calibration = calibrate_i0(ndct, spacing, ndct_noise_sd, opts)

    body = ndct > -500
    ldct = simulate_volume_multi(ndct, spacing, specs, int(make_rng(opts.seed, subject.key, "ndct").integers(2**31)),
                                 i0_full, opts.sigma_e)
    tags: Dict[str, object] = {}
    for spec in specs:
        _write(ldct[spec.tag], image, folder / f"ldct_{spec.tag}.nrrd")
        stats = inserted_noise_stats(ldct[spec.tag], ndct)
        nps = noise_nps_summary(ldct[spec.tag] - ndct, body, (spacing[1], spacing[0]))
        tags[spec.tag] = {"dose": spec.dose, "filter": spec.filter, "file": f"ldct_{spec.tag}.nrrd",
                          "i0_inserted": round(i0_for(spec, geometry, i0_full), 1), **stats,
                          "ldct_uniform_sd_hu": boxes_sd(ldct[spec.tag], boxes),
                          "nps_peak_mm": nps["peak_mm"], "nps_peak_px": nps["peak_px"],
                          "nps_band_fractions_px": nps["band_fractions_px"]}
    entry: Dict[str, object] = {
        "key": subject.key, "split": subject.split, "kind": subject.kind, "region": subject.region,
        "source": subject.source, "origin": subject.origin, "licence": subject.licence,
        **({"citation": subject.git.citation} if subject.git else {}), "note": subject.note, "original": original,
        "size_xyz": list(image.GetSize()), "spacing_xyz": [round(s, 6) for s in spacing],
        "geometry": {"views": geometry.views, "detectors": geometry.detectors,
                     "detector_spacing_mm": round(geometry.detector_spacing, 6)},
        "i0_full": round(i0_full, 1), "calibration": calibration,
        "ndct": "ndct.nrrd", "ndct_uniform_sd_hu": ndct_box_sd, "ndct_noise_sd_hu": ndct_noise_sd,
        "uniform_boxes": [str(b) for b in boxes], "tags": tags,
    }
    if opts.clean_protocol:
        clean = np.rint(consensus_reference(ndct, ndct_box_sd or 10.0))  # as written (int16 HU)
        _write(clean, image, folder / "clean.nrrd")
        clean_ldct = simulate_volume_multi(clean, spacing, specs,
                                           int(make_rng(opts.seed, subject.key, "clean").integers(2**31)),
                                           i0_full, opts.sigma_e)
        clean_tags = {}
        for spec in specs:
            _write(clean_ldct[spec.tag], image, folder / f"clean_ldct_{spec.tag}.nrrd")
            clean_tags[spec.tag] = {"file": f"clean_ldct_{spec.tag}.nrrd",
                                    **inserted_noise_stats(clean_ldct[spec.tag], clean)}
        entry["clean"] = {"file": "clean.nrrd",
                          "method": "mean of 3D non-local means and 3D total variation (clean_reference.py)",
                          "sigma_hu": round(ndct_box_sd or 10.0, 2),
                          "uniform_sd_hu": boxes_sd(clean, boxes), "tags": clean_tags}
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return entry


@dataclass
class BuildOptions:
    out_dir: Path = DEFAULT_OUT
    cache_dir: Optional[Path] = None
    source_dir: Optional[Path] = None        # clones of the git sources (data.sources.find_repository)
    quick: bool = False
    seed: int = 0
    tags: Sequence[str] = DEFAULT_TAGS
    max_slices: Optional[int] = None         # default: 40, or 4 with quick
    spread: bool = False                     # slices spread over the body (select_slices)
    clean_protocol: bool = True
    clean_sigma_factor: float = 1.5          # BM3D sigma = factor x the NDCT's uniform-box SD
    dose_reference: str = "ndct"             # "ndct" (per-scan full dose) or "fixed" (see calibrate_i0)
    i0_full: float = DEFAULT_I0_FULL
    sigma_e: float = DEFAULT_SIGMA_E
    subjects: Sequence[Subject] = field(default_factory=lambda: SUBJECTS)

    def __post_init__(self) -> None:
        if self.dose_reference not in DOSE_REFERENCES:
            raise InputError(f"dose_reference must be one of {', '.join(DOSE_REFERENCES)}")


def build_dataset(opts: BuildOptions, log: Log = print_line) -> Dict[str, object]:
    """Build every subject and write `manifest.json`; returns the manifest."""
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for tag in opts.tags:
        DoseSpec.from_tag(tag)  # fail before any work on a bad tag
    start = time.perf_counter()
    subjects = []
    for i, subject in enumerate(opts.subjects, 1):
        log(f"[{i}/{len(opts.subjects)}] {subject.key} ({subject.split}, {subject.region})")
        subjects.append(build_subject(subject, opts, log))
    manifest = {
        "format": 1,
        "description": "Paired LDCT/NDCT by projection-domain noise insertion into real CT (see docs/DATA.md)",
        "quick": opts.quick, "seed": opts.seed, "train_tag": TRAIN_TAG, "tags": list(opts.tags),
        "simulation": {"mu_water_per_mm": MU_WATER_PER_MM, "i0_full_reference": opts.i0_full,
                       "dose_reference": opts.dose_reference, "sigma_e_counts": opts.sigma_e,
                       "reference_geometry": {"views": REF_VIEWS, "detector_spacing_mm": REF_SPACING_MM},
                       "grid_equivalent": True, "beam": "parallel (astra CPU FBP is parallel-only)",
                       "i0_inserted": "i0_full(subject) * dose / (1 - dose) * (ref_views / views) * (ref_spacing / spacing)^2"},
        "clean_protocol": opts.clean_protocol,
        "splits": {s: [e["key"] for e in subjects if e["split"] == s] for s in SPLITS},
        "subjects": subjects,
        "seconds": round(time.perf_counter() - start, 1),
    }
    tmp = out_dir / ".manifest.json.part"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def load_manifest(dataset_dir: Path = DEFAULT_OUT) -> Dict[str, object]:
    path = Path(dataset_dir) / "manifest.json"
    if not path.exists():
        raise InputError(f"No dataset at {dataset_dir} (missing manifest.json): run `selfsupctdenoise simulate`.")
    return json.loads(path.read_text(encoding="utf-8"))


def subject_paths(dataset_dir: Path, key: str, tag: str = TRAIN_TAG, clean: bool = False) -> Tuple[Path, Path]:
    """(LDCT, reference) paths of one subject: (ldct_<tag>, ndct) or, with `clean`, (clean_ldct_<tag>, clean)."""
    folder = Path(dataset_dir) / key
    if clean:
        return folder / f"clean_ldct_{tag}.nrrd", folder / "clean.nrrd"
    return folder / f"ldct_{tag}.nrrd", folder / "ndct.nrrd"


# ---------------------------------------------------------------------------------------------
# Summary and demo sample

def summary_table(manifest: Dict[str, object]) -> str:
    tags = manifest["tags"]
    head = (f"{'subject':<12} {'split':<5} {'kind':<6} {'grid (x y z)':<14} {'mm':>5} {'NDCT sd':>7} "
            f"{'I0 x':>5} " + " ".join(f"{t:>10}" for t in tags) + f" {'lag1':>5} {'s':>6}")
    lines = [head, "-" * len(head)]
    for e in manifest["subjects"]:
        grid = "x".join(str(v) for v in e["size_xyz"])
        sd = e["ndct_noise_sd_hu"]
        scale = e["i0_full"] / manifest["simulation"]["i0_full_reference"]
        cells = " ".join(f"{e['tags'][t]['noise_std_hu']:10.1f}" for t in tags)
        lag1 = e["tags"][tags[0]]["lag1_autocorr"]
        lines.append(f"{e['key']:<12} {e['split']:<5} {e['kind']:<6} {grid:<14} {e['spacing_xyz'][0]:5.2f} "
                     f"{(sd if sd is not None else float('nan')):7.1f} {scale:5.2f} {cells} {lag1:5.2f} "
                     f"{e['seconds']:6.1f}")
    lines.append("tag columns: SD of LDCT - NDCT in soft tissue (HU); NDCT sd: the NDCT's own noise in its 5 "
                 "flattest 15 mm soft-tissue boxes (structure-corrected); I0 x: full dose vs the reference I0")
    return "\n".join(lines)


def write_sample(dataset_dir: Path, dest: Path = SAMPLE_DIR, key: str = "ts_chest", tag: str = TRAIN_TAG,
                 max_slices: int = 32) -> Dict[str, Path]:
    """Copy one held-out subject's LDCT (training dose), NDCT and denoised NDCT (`clean` protocol
    reference) as gzip int16 NRRD into `dest`."""
    import SimpleITK as sitk

    from ..files.volumes import write_volume

    ldct_path, ndct_path = subject_paths(dataset_dir, key, tag)
    denoised_path = subject_paths(dataset_dir, key, tag, clean=True)[1]
    if not (ldct_path.exists() and ndct_path.exists() and denoised_path.exists()):
        raise InputError(f"No {key} subject with tag {tag} and its clean reference in {dataset_dir}: build it first.")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = {}
    for role, path in (("ldct", ldct_path), ("ndct", ndct_path), ("ndct_denoised", denoised_path)):
        image = sitk.ReadImage(str(path))
        nz = image.GetSize()[2]
        if nz > max_slices:
            start = (nz - max_slices) // 2
            image = image[:, :, start:start + max_slices]
        target = dest / SAMPLE_FILES[role]
        write_volume(sitk.Cast(image, sitk.sitkInt16), target, compress=True)
        written[role] = target
    return written


def sample_paths() -> Dict[str, Path]:
    """Paths of the shipped demo sample: {'ldct': quarter-dose LDCT, 'ndct': its normal-dose CT,
    'ndct_denoised': that CT denoised}."""
    paths = {role: SAMPLE_DIR / name for role, name in SAMPLE_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise InputError(f"Demo sample missing: {', '.join(missing)}")
    return paths
