"""`pretrain`: train f_theta and one noise model per subject from paired LDCT/NDCT volumes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError

HELP = "pre-train a model bundle (denoiser + noise models + calibration) from LDCT/NDCT pairs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (resumes if interrupted)")
    parser.add_argument("--pair", nargs="+", action="append", default=[], metavar="PATH",
                        help="one training subject: LDCT NDCT [SECOND_LDCT for N2N]; repeat per subject")
    parser.add_argument("--dataset", type=Path, nargs="+", default=[], metavar="FOLDER",
                        help="folder(s) made by `simulate` (uses their training subjects)")
    parser.add_argument("--tag", nargs="+", default=["d25_hann"], metavar="TAG",
                        help="low-dose tag(s) of the dataset to train on; several tags = one training pair per "
                             "subject and tag; the first is the reference protocol the calibration is "
                             "measured on (the smooth standard kernel) [d25_hann]")
    parser.add_argument("--subjects", nargs="+", metavar="KEY",
                        help="only these training subjects of --dataset [all training subjects]")
    parser.add_argument("--profile", default="lite", help="network profile: paper, lite or tiny [lite]")
    parser.add_argument("--method", default="n2c", choices=("n2c", "n2n", "n2v"), help="denoiser pre-training [n2c]")
    parser.add_argument("--denoiser-steps", type=int, default=3000)
    parser.add_argument("--noise-model-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate, cosine-decayed [1e-4]")
    parser.add_argument("--loss", default="l1", choices=("l1", "l2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recalibrate", action="store_true",
                        help="keep the networks of the bundle at --out and measure its calibration again on "
                             "these subjects (no training)")
    parser.add_argument("--noise-models-from", type=Path, metavar="BUNDLE",
                        help="with --recalibrate: take the noise models of this bundle (same profile)")
    parser.add_argument("--init-from", type=Path, metavar="BUNDLE",
                        help="start the denoiser from this bundle's (same profile), with a new cosine "
                             "schedule of --denoiser-steps: pushes a finished prior further")
    parser.add_argument("--quiet", action="store_true")


def _licence(key: str, entry: dict) -> str:
    """The image licence of a dataset subject: the code's record (data.sources.SUBJECTS) wins over a
    dataset manifest written before image licences were recorded apart from package licences."""
    from ..data.sources import SUBJECTS

    known = {s.key: s.licence for s in SUBJECTS}
    return known.get(key) or entry.get("licence") or "unknown"


def load_subject(name: str, ldct_path, ndct_path, ldct_b_path=None, licence: str = "unknown", reference: bool = True):
    """One training subject (`engine.train.Subject`) read from its LDCT, NDCT and optional second LDCT files."""
    import numpy as np
    import SimpleITK as sitk

    from ..engine.train import Subject
    from ..files.volumes import read_volume

    def array(path):
        return sitk.GetArrayFromImage(read_volume(path)).astype(np.float32)

    ldct, ndct = array(ldct_path), array(ndct_path)
    if ldct.shape != ndct.shape:
        raise InputError(f"Subject {name}: LDCT {ldct.shape} and NDCT {ndct.shape} differ in size.")
    ldct_b = array(ldct_b_path) if ldct_b_path else None
    files = {"ldct": str(ldct_path), "ndct": str(ndct_path), **({"ldct_b": str(ldct_b_path)} if ldct_b_path else {})}
    return Subject(name, ldct, ndct, ldct_b, files, licence, reference)


def dataset_subjects(dataset: Path, tags, only=None):
    """One training subject per training-split subject of a `simulate` folder and tag (`only`: these keys)."""
    manifest_path = dataset / "manifest.json"
    if not manifest_path.exists():
        raise InputError(f"{dataset} has no manifest.json; build it with `selfsupctdenoise simulate`.")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    subjects = []
    for entry in (s for s in manifest["subjects"] if s["split"] == "train"):
        key = entry.get("key") or entry["name"]
        if only and key not in only:
            continue
        for tag in tags:
            folder = dataset / key
            second = folder / f"ldct_{tag}_b.nrrd"
            name = key if len(tags) == 1 else f"{key}@{tag}"
            subjects.append(load_subject(name, folder / f"ldct_{tag}.nrrd", folder / "ndct.nrrd",
                                         second if second.exists() else None,
                                         licence=_licence(key, entry), reference=tag == tags[0]))
    return subjects


def subjects_from_args(args: argparse.Namespace):
    subjects = []
    for index, paths in enumerate(args.pair):
        if len(paths) not in (2, 3):
            raise InputError("--pair takes LDCT NDCT [SECOND_LDCT].")
        subjects.append(load_subject(f"subject{index}", *paths))
    for dataset in args.dataset:
        subjects += dataset_subjects(dataset, args.tag, args.subjects)
    unknown = sorted(set(args.subjects or ()) - {s.name.split("@")[0] for s in subjects})
    if unknown:
        raise InputError(f"Not training subjects of {', '.join(str(d) for d in args.dataset)}: {', '.join(unknown)}.")
    if not subjects:
        raise InputError("No training subjects: give --pair LDCT NDCT (repeat) or --dataset FOLDER.")
    return subjects


def run(args: argparse.Namespace) -> int:
    from ..engine.train import PretrainConfig, pretrain, recalibrate
    from .console import TqdmProgress

    if args.init_from and args.recalibrate:
        raise InputError("--init-from starts a pre-training; --recalibrate trains nothing.")
    if args.noise_models_from and not args.recalibrate:
        raise InputError("--noise-models-from goes with --recalibrate (pre-training makes its own noise models).")
    config = PretrainConfig(profile=args.profile, method=args.method, denoiser_steps=args.denoiser_steps,
                            noise_model_steps=args.noise_model_steps, batch_size=args.batch_size,
                            patch_size=args.patch_size, lr=args.lr, loss=args.loss, seed=args.seed)
    subjects = subjects_from_args(args)
    if args.recalibrate:
        if not (args.out / "manifest.json").exists():
            raise InputError(f"--recalibrate needs a bundle at {args.out} (no manifest.json there).")
        bundle = recalibrate(args.out, subjects, config, args.noise_models_from)
        print(f"recalibrated bundle {bundle.path} on {', '.join(bundle.manifest['training']['recalibrated']['subjects'])} "
              f"(sha256 {bundle.sha256[:12]}); denoiser unchanged, noise models "
              + (f"from {args.noise_models_from}" if args.noise_models_from else "unchanged"))
        return 0
    progress = TqdmProgress(enabled=not args.quiet)
    try:
        bundle = pretrain(subjects, args.out, config, progress, init_from=args.init_from)
    finally:
        progress.close()
    losses = bundle.manifest["training"]["final_losses"]
    print(f"wrote bundle {bundle.path} (profile {bundle.profile.name}, {bundle.num_noise_models} noise models, "
          f"sha256 {bundle.sha256[:12]}); final losses: "
          + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
    cal = bundle.calibration
    print(f"calibration: amplitude x{cal['amplitude']:.2f}, training noise {cal['noise_std_soft_tissue_hu']:.1f} HU "
          f"(soft tissue), model/real noise correlation {cal['model_real_correlation']:.2f}")
    return 0
