"""Adaptation options shared by the subcommands that denoise (denoise, benchmark, worker).

Every flag defaults to None so that a `--config` JSON file can supply defaults and explicit
flags win over it; `config_from_args` merges them into one validated AdaptConfig.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..engine.config import AUGMENT, DEVICES, NOISE_LEVEL, PSEUDO_NOISE, VIEW_COUNTS, AdaptConfig
from ..errors import InputError


def parse_strength(text: str) -> float:
    from ..engine.strength import resolve_strength

    try:
        return resolve_strength(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    d = AdaptConfig()
    group = parser.add_argument_group("adaptation (defaults in brackets)")
    group.add_argument("--config", type=Path, help="JSON file of parameters; explicit flags override it")
    group.add_argument("--steps", type=int, help=f"adaptation steps; 0 = pretrained model only [{d.steps}]")
    group.add_argument("--period", type=int,
                       help=f"teacher update period C in steps (the last step updates it too) [{d.period}]")
    group.add_argument("--lr", type=float, help=f"learning rate [{d.lr}]")
    group.add_argument("--batch-size", type=int, help=f"patches per adaptation step [{d.batch_size}]")
    group.add_argument("--patch-size", type=int, help=f"patch side in pixels [{d.patch_size}]")
    group.add_argument("--seed", type=int, help=f"random seed; the same input, seed, thread count, device and "
                                                f"torch build give the same output [{d.seed}]")
    group.add_argument("--threads", type=int, help=f"CPU threads for torch; 0 = OMP_NUM_THREADS if set, else all cores [{d.threads}]")
    group.add_argument("--pseudo-noise", choices=PSEUDO_NOISE, help=f"pseudo-noise source [{d.pseudo_noise}]")
    group.add_argument("--noise-level", choices=NOISE_LEVEL,
                       help=f"pseudo-noise level from the bundle, estimated on the input, or estimated and following "
                            f"where the input is noisier or quieter (local) [{d.noise_level}]")
    group.add_argument("--augment", choices=AUGMENT, help=f"patch augmentation [{d.augment}]")
    group.add_argument("--gaussian-sigma", dest="gaussian_sigma_hu", type=float,
                       help=f"sigma (HU) of --pseudo-noise gaussian [{d.gaussian_sigma_hu}]")
    group.add_argument("--adapt-slices", type=int, help=f"slices feeding the patch pool [{d.adapt_slices}]")
    group.add_argument("--no-teacher-update", dest="teacher_update", action="store_const", const=False,
                       help="never copy the student into the teacher (the paper's ablation)")
    group.add_argument("--no-guard", dest="guard", action="store_const", const=False,
                       help="keep the adapted model even when the guard would fall back to the pretrained one")
    group.add_argument("--no-ct-check", dest="ct_check", action="store_const", const=False,
                       help="denoise even what does not look like CT in HU (the output's provenance records "
                            "what the check would have said)")
    group.add_argument("--device", choices=DEVICES, help=f"auto = CUDA when available [{d.device}]")
    group.add_argument("--infer-batch", type=int, help="slices per inference batch [0 = per device: 1 on the CPU, 4 on CUDA]")
    group.add_argument("--no-mixed-precision", dest="mixed_precision", action="store_const", const=False,
                       help="float32 on CUDA too")
    group.add_argument("--whole-slices", dest="body_only", action="store_const", const=False,
                       help="denoise the air and table around the body too (slower; by default only each "
                            "slice's body box is denoised and the rest is the input as it is)")
    group.add_argument("--views", type=int, choices=VIEW_COUNTS,
                       help=f"average the network over this many turned and mirrored views of each slice (a little "
                            f"less noise; the inference takes that many times as long) [{d.views}]")
    group.add_argument("--strength", type=parse_strength,
                       help="how much of what the model removed is taken away: output = input - strength x "
                            "(input - model output); 0..1 or low/medium/high [1.0]")
    group.add_argument("--target-noise", type=float, metavar="HU",
                       help="instead of --strength: the noise SD (HU) to leave in uniform soft tissue; the strength "
                            "is chosen from this run's own measure of the input's noise and of the full result's "
                            "(0 if the input is already that quiet) and recorded in the provenance")


def config_from_args(args: argparse.Namespace) -> AdaptConfig:
    if getattr(args, "strength", None) is not None and getattr(args, "target_noise", None) is not None:
        raise InputError("Give either --strength or --target-noise, not both.")
    values = {}
    if getattr(args, "config", None):
        try:
            values = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"Cannot read the parameter file {args.config}: {exc}") from None
        if not isinstance(values, dict):
            raise InputError(f"The parameter file {args.config} must hold a JSON object.")
    for name in AdaptConfig.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return AdaptConfig.from_dict(values)
