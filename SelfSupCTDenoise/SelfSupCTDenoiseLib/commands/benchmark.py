"""`benchmark`: the paper's Table 1 and the pseudo-noise study on the held-out simulated subjects."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "run the benchmark on a `simulate` dataset and write BENCHMARK.md, JSON and plots (into out/benchmark)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, default=Path("data/sim"))
    parser.add_argument("--bundle", type=Path, help="N2C bundle [shipped lite]")
    parser.add_argument("--bundle-paper", type=Path, help="paper-size N2C bundle (rows Paper-size N2C ...)")
    parser.add_argument("--bundle-n2n", type=Path, help="N2N bundle (rows N2N, N2N + Ours)")
    parser.add_argument("--bundle-n2v", type=Path, help="N2V bundle (rows N2V, N2V + Ours)")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="the dataset's subjects to run on: the held-out test subjects, or the validation "
                             "subject(s) that choices are made on [test]")
    parser.add_argument("--quick", action="store_true", help="fewer rows, doses and steps (CPU)")
    parser.add_argument("--tags", nargs="+", help="low-dose tags [all four; quick: d25_hann d12_hann]")
    parser.add_argument("--protocols", nargs="+", default=None, choices=("ndct", "clean"),
                        help="[ndct clean; quick: ndct]")
    parser.add_argument("--steps", type=int, help="adaptation steps [200; quick: 100]")
    parser.add_argument("--out", type=Path, default=Path("out/benchmark"),
                        help="report folder [%(default)s; the committed report: --out docs/benchmark_200_steps]")
    parser.add_argument("--rows", nargs="+", help="only the rows whose name contains one of these texts")
    parser.add_argument("--json-only", type=Path, help="write only the raw results here (for --merge)")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="write the report from raw results of runs made in parallel, without running")


def run(args: argparse.Namespace) -> int:
    import json

    from ..bench.benchmark import merge_results, run_benchmark, write_report
    from ..engine.bundle import default_bundle_dir, load_bundle

    if args.merge:
        results = merge_results([json.loads(p.read_text(encoding="utf-8")) for p in args.merge])
        command = results["meta"].get("command", "selfsupctdenoise benchmark")
        print(f"wrote {write_report(results, args.out, command)}")
        return 0
    bundles = {"n2c": load_bundle(args.bundle or default_bundle_dir("lite"))}
    if args.bundle_paper:
        bundles["paper"] = load_bundle(args.bundle_paper)
    if args.bundle_n2n:
        bundles["n2n"] = load_bundle(args.bundle_n2n)
    if args.bundle_n2v:
        bundles["n2v"] = load_bundle(args.bundle_n2v)
    tags = args.tags or (["d25_hann", "d12_hann"] if args.quick else ["d25_hann", "d12_hann", "d50_hann", "d25_ramlak"])
    protocols = args.protocols or (["ndct"] if args.quick else ["ndct", "clean"])
    steps = args.steps or (100 if args.quick else 200)
    results = run_benchmark(args.dataset, bundles, quick=args.quick, tags=tags, protocols=protocols, steps=steps,
                            rows_filter=args.rows, split=args.split)
    command = "selfsupctdenoise benchmark " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("benchmark") + 1:]) \
        if "benchmark" in sys.argv else "selfsupctdenoise benchmark"
    results["meta"]["command"] = command
    if args.json_only:
        args.json_only.write_text(json.dumps(results))
        print(f"wrote {args.json_only}")
        return 0
    print(f"wrote {write_report(results, args.out, command)}")
    return 0
