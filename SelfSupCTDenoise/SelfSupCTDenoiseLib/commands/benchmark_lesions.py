"""`benchmark-lesions`: does it keep the faint lesion? Inserted discs, contrast retained, CNR, CHO d'."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "insert faint discs into the held-out subjects and measure contrast retained, CNR and CHO d' per method"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench.lesion_benchmark import TAGS

    parser.add_argument("--dataset", type=Path, default=Path("data/sim"))
    parser.add_argument("--bundle", type=Path, help="N2C bundle [shipped lite]")
    parser.add_argument("--tags", nargs="+", default=list(TAGS), help="low-dose tags [%(default)s]")
    parser.add_argument("--subjects", nargs="+", help="subject keys [the manifest's test split]")
    parser.add_argument("--layouts", type=int, default=5, help="lesion layouts per subject [%(default)s]")
    parser.add_argument("--repeats", type=int, default=3,
                        help="copies of each layout with and without its discs [%(default)s]")
    parser.add_argument("--steps", type=int, default=200, help="adaptation steps [%(default)s, the product's]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", choices=("clean", "ndct"), default="clean",
                        help="slices the discs go into: the denoised normal-dose image or the NDCT [%(default)s]")
    parser.add_argument("--out", type=Path, default=Path("out/lesions"),
                        help="JSON and figures [%(default)s; the committed ones: --out docs/lesions]")
    parser.add_argument("--report", type=Path, default=Path("out/lesions/BENCHMARK.md"),
                        help="markdown report whose lesion section is written [%(default)s; the committed one: "
                             "--report docs/BENCHMARK.md]")
    parser.add_argument("--json-only", type=Path, help="write only the raw results here (for --merge)")
    parser.add_argument("--merge", type=Path, nargs="+", help="write the report from raw results of parallel runs")


def run(args: argparse.Namespace) -> int:
    import json

    from ..bench.lesion_benchmark import merge_lesion_results, run_lesion_benchmark, write_lesion_report
    from ..engine.bundle import default_bundle_dir, load_bundle
    from ..errors import InputError

    name = "benchmark-lesions"
    command = (f"selfsupctdenoise {name} " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index(name) + 1:])
               if name in sys.argv else f"selfsupctdenoise {name}")
    if args.merge:
        results = merge_lesion_results([json.loads(p.read_text(encoding="utf-8")) for p in args.merge])
        results["meta"]["merge_command"] = command
        for path in write_lesion_report(results, args.out, args.report):
            print(f"wrote {path}")
        return 0
    if args.layouts < 1 or args.repeats < 2 or args.steps < 0:
        raise InputError("--layouts must be >= 1, --repeats >= 2 and --steps >= 0.")
    bundle = load_bundle(args.bundle or default_bundle_dir("lite"))
    results = run_lesion_benchmark(args.dataset, bundle, tags=args.tags, steps=args.steps, layouts=args.layouts,
                                   repeats=args.repeats, seed=args.seed, reference=args.reference,
                                   subjects=args.subjects)
    results["meta"]["command"] = command
    if args.json_only:
        args.json_only.parent.mkdir(parents=True, exist_ok=True)
        args.json_only.write_text(json.dumps(results), encoding="utf-8")
        print(f"wrote {args.json_only}")
        return 0
    for path in write_lesion_report(results, args.out, args.report):
        print(f"wrote {path}")
    return 0
