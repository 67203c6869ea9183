"""Run-time knobs of the shipped adaptation on the validation cases (docs/LEVERS.md): learning rate,
pseudo-noise level over the estimate, and what averaging more views of the adapted network gives
(the engine's turns and mirrors of a slice, and the coronal and sagittal planes of a volume).
Experiments, not product code: the level and the views reach into the engine by replacing two of its
functions.

    OMP_NUM_THREADS=1 python benchmarks/levers/runtime_knobs.py --set lr=0.0002
    OMP_NUM_THREADS=1 python benchmarks/levers/runtime_knobs.py --level 1.15
    OMP_NUM_THREADS=1 python benchmarks/levers/runtime_knobs.py --views [--planes] --cases ts_chest:d12_hann
    OMP_NUM_THREADS=1 python benchmarks/levers/runtime_knobs.py --set noise_level=input
    OMP_NUM_THREADS=1 python benchmarks/levers/runtime_knobs.py --body-patches --set seed=1

`--body-patches`: the adaptation's patches drawn inside each pool slice's body box
(`engine/body.py`, no margin) instead of anywhere on it: on real chest CT about 40 % of a uniform
draw's area is air, table or blankets (docs/SPEED.md, issue #28).

The local-level variants of docs/LEVERS.md section 5 (`all`, `tissue`, `flat`) were measured with this
script's `--local-level` of commit 2b40b6f; `flat` is now the engine's noise_level "local".
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from common import VALIDATION, read_case


def view_outputs(apply, volume: np.ndarray) -> list:
    """The network's output for each of the engine's VIEWS (engine/inference.py), each turned back."""
    import torch

    from SelfSupCTDenoiseLib.engine.inference import VIEWS, from_view, to_view

    return [from_view(torch.from_numpy(apply(to_view(torch.from_numpy(volume), view).numpy())), view).numpy()
            for view in VIEWS]


#: Means of views scored by `--views`: the engine's first n (its config `views`), and one other pair
#: (docs/data/lever_views.jsonl was printed when the engine's second view was the half turn: its
#: "views_2" is the slice and its half turn, its "views_2_quarter_turn" the slice and its quarter turn).
VIEW_SETS = {"1": (0,), "2": (0, 1), "2_half_turn": (0, 2), "4": (0, 1, 2, 3), "8": tuple(range(8))}


def body_patch_sampler(sampler_class, to_hu):
    """`sampler_class` (engine/adapt.py's PatchSampler) with its crops' corners drawn so that each crop
    lies inside its slice's body box where the box is large enough (else as before, on that axis)."""
    from SelfSupCTDenoiseLib.engine.body import body_boxes

    class BodyPatchSampler(sampler_class):
        def __init__(self, pool, *args, **kwargs):
            super().__init__(pool, *args, **kwargs)
            self.boxes = body_boxes(to_hu(pool.numpy()[:, 0]), margin=0)

        def _corner(self, slices, height, width, crop):
            i = self._randint(slices)
            y0, y1, x0, x1 = self.boxes[i]
            ys = (y0, y1 - crop + 1) if y1 - y0 >= crop else (0, height - crop + 1)
            xs = (x0, x1 - crop + 1) if x1 - x0 >= crop else (0, width - crop + 1)
            return i, ys[0] + self._randint(ys[1] - ys[0]), xs[0] + self._randint(xs[1] - xs[0])

    return BodyPatchSampler


def main() -> None:
    import SelfSupCTDenoiseLib.engine.adapt as adapt_module
    import SelfSupCTDenoiseLib.engine.run as run_module
    from SelfSupCTDenoiseLib.engine.bundle import load_bundle
    from SelfSupCTDenoiseLib.engine.config import AdaptConfig
    from SelfSupCTDenoiseLib.engine.inference import apply_slicewise
    from SelfSupCTDenoiseLib.quality.metrics import compare

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default=VALIDATION)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--dataset", default="data/sim")
    parser.add_argument("--set", nargs="*", default=[], help="AdaptConfig fields, key=value")
    parser.add_argument("--level", type=float, default=1.0, help="pseudo-noise level / the estimate")
    parser.add_argument("--views", action="store_true", help="also score means of views (VIEW_SETS)")
    parser.add_argument("--planes", action="store_true", help="with --views, also the mean of 3 planes (volumes)")
    parser.add_argument("--body-patches", action="store_true", help="adaptation patches inside the body boxes")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    norm = bundle.normalization
    if args.body_patches:
        adapt_module.PatchSampler = body_patch_sampler(adapt_module.PatchSampler, norm.to_hu)
    defaults = AdaptConfig()
    overrides = {key: type(getattr(defaults, key))(value) for key, value in (kv.split("=") for kv in args.set)}
    config = defaults.with_(threads=1, **overrides)
    measured = run_module.pseudo_noise_std  # the level factor is the estimate over this
    run_module.pseudo_noise_std = lambda *a, **k: measured(*a, **k) / args.level
    adapted = {}
    adapt = adapt_module.adapt

    def keep(*a, **k):
        adapted["model"], history = adapt(*a, **k)
        return adapted["model"], history

    adapt_module.adapt = keep

    def apply(volume):
        return apply_slicewise(adapted["model"], np.ascontiguousarray(volume), 1, to_input=norm.to_model,
                               from_output=norm.to_hu)

    for case in args.cases.split(","):
        ldct, reference, _ = read_case(args.dataset, case)
        result = run_module.denoise_array(ldct, bundle, config)
        row = {"case": case, "set": args.set, "level": args.level, **({"bundle": args.bundle} if args.bundle else {}),
               **({"body_patches": True} if args.body_patches else {}),
               "psnr_soft": compare(result.denoised, reference)["psnr_soft"],
               "guard_fell_back": bool((result.info["run"].get("guard") or {}).get("fell_back"))}
        if args.views and not row["guard_fell_back"]:
            outputs = view_outputs(apply, ldct)
            for name, chosen in VIEW_SETS.items():
                row[f"psnr_soft_views_{name}"] = compare(np.mean([outputs[i] for i in chosen], axis=0),
                                                         reference)["psnr_soft"]
            if args.planes and len(ldct) > 8:  # a volume: the coronal and sagittal planes too
                coronal = apply(ldct.transpose(1, 0, 2)).transpose(1, 0, 2)
                sagittal = apply(ldct.transpose(2, 0, 1)).transpose(1, 2, 0)
                row["psnr_soft_3_planes"] = compare((result.denoised + coronal + sagittal) / 3, reference)["psnr_soft"]
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
