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
    parser.add_argument("--dataset", type=Path, help="a folder made by `simulate` (uses its training subjects)")
    parser.add_argument("--tag", default="d25_hann", help="low-dose tag of the dataset to train on [d25_hann]")
    parser.add_argument("--profile", default="lite", help="network profile: paper, lite or tiny [lite]")
    parser.add_argument("--method", default="n2c", choices=("n2c", "n2n", "n2v"), help="denoiser pre-training [n2c]")
    parser.add_argument("--denoiser-steps", type=int, default=3000)
    parser.add_argument("--noise-model-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate, cosine-decayed [1e-4]")
    parser.add_argument("--loss", default="l1", choices=("l1", "l2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")


def subjects_from_args(args: argparse.Namespace):
    from ..train import load_subject

    subjects = []
    for index, paths in enumerate(args.pair):
        if len(paths) not in (2, 3):
            raise InputError("--pair takes LDCT NDCT [SECOND_LDCT].")
        subjects.append(load_subject(f"subject{index}", *paths))
    if args.dataset:
        manifest_path = args.dataset / "manifest.json"
        if not manifest_path.exists():
            raise InputError(f"{args.dataset} has no manifest.json; build it with `selfsupctdenoise simulate`.")
        manifest = json.loads(manifest_path.read_text())
        for subject in manifest["subjects"]:
            if subject["split"] != "train":
                continue
            name = subject.get("key") or subject["name"]
            folder = args.dataset / name
            second = folder / f"ldct_{args.tag}_b.nrrd"
            subjects.append(load_subject(name, folder / f"ldct_{args.tag}.nrrd", folder / "ndct.nrrd",
                                         second if second.exists() else None))
    if not subjects:
        raise InputError("No training subjects: give --pair LDCT NDCT (repeat) or --dataset FOLDER.")
    return subjects


def run(args: argparse.Namespace) -> int:
    from ..console import TqdmProgress
    from ..train import PretrainConfig, pretrain

    config = PretrainConfig(profile=args.profile, method=args.method, denoiser_steps=args.denoiser_steps,
                            noise_model_steps=args.noise_model_steps, batch_size=args.batch_size,
                            patch_size=args.patch_size, lr=args.lr, loss=args.loss, seed=args.seed)
    subjects = subjects_from_args(args)
    progress = TqdmProgress(enabled=not args.quiet)
    try:
        bundle = pretrain(subjects, args.out, config, progress)
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
