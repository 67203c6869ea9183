"""A wider `lite` prior without starting over (docs/LEVERS.md section 8): the shipped lite denoiser
widened to more channels so that it computes exactly the same function (the new channels are read by
zero weights), then pre-trained further on the shipped bundle's six protocols. Experiments, not product
code: it writes a bundle whose profile is `lite` with the wider denoiser, with the shipped bundle's
noise models and calibration.

    OMP_NUM_THREADS=1 python benchmarks/levers/widen_prior.py --channels 48 --steps 3000 \
        --dataset data/sim_train --out out/wide/lite48        # resumes from its checkpoint
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

TAGS = ["d25_hann", "d50_hann", "d18_hann", "d25_shepplogan", "d50_shepplogan", "d35_hamming"]


def widen(narrow: torch.nn.Module, channels: int) -> torch.nn.Module:
    """RED-CNN with `channels` feature channels computing what `narrow` computes: the old weights in
    the first channels, weights that make new channels drawn by torch's default initialisation (seed it
    for a repeatable draw), weights that read them zero."""
    from SelfSupCTDenoiseLib.engine.networks.redcnn import RedCNN

    wide = RedCNN(channels=channels, kernel_size=narrow.kernel_size, identity_init=False)
    old = narrow.state_dict()
    new = wide.state_dict()
    for name, weight in new.items():
        source = old[name]
        fresh = weight.clone()
        if weight.dim() == 4:
            transposed = name.startswith("tconv")  # ConvTranspose2d weights are (in, out, k, k)
            read_axis = 0 if transposed else 1
            # the new channels' inputs: nothing reads them until training moves these off zero
            index = [slice(None)] * 4
            index[read_axis] = slice(source.shape[read_axis], None)
            fresh[tuple(index)] = 0.0
            fresh.mul_(0.5)  # the new channels start small beside the trained ones
        fresh[tuple(slice(0, n) for n in source.shape)] = source
        new[name] = fresh
    wide.load_state_dict(new)
    return wide


def main() -> None:
    from SelfSupCTDenoiseLib.commands.pretrain import subjects_from_args
    from SelfSupCTDenoiseLib.engine.bundle import load_bundle, save_bundle
    from SelfSupCTDenoiseLib.engine.train import PairSampler, fit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dataset", type=Path, default=Path("data/sim_train"))
    parser.add_argument("--from-bundle", type=Path, default=None, help="the narrow bundle [shipped lite]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    start = load_bundle(args.from_bundle)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = widen(start.build_denoiser("cpu"), args.channels)
    subjects = subjects_from_args(SimpleNamespace(pair=[], dataset=args.dataset, tag=TAGS, subjects=None))
    pairs = PairSampler([(s.ldct, s.ndct) for s in subjects], 64, generator)
    norm = start.normalization

    def loss(net):
        ldct, ndct = (norm.to_model(t) for t in pairs.sample(16))
        return torch.nn.functional.l1_loss(net(ldct), ndct)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    curve = fit(model, loss, args.steps, args.lr, args.out.parent / f"{args.out.name}.checkpoint.pt", 250,
                generator, "widened pretrain")
    noise_states = [torch.load(start.path / entry["name"], map_location="cpu", weights_only=True)
                    for entry in start.manifest["files"]["noise_models"]]
    training = dict(start.manifest["training"], widened={
        "from_sha256": start.sha256, "channels": args.channels, "steps": args.steps, "lr": args.lr, "tags": TAGS,
        "final_loss": float(sum(curve[-50:]) / len(curve[-50:]))})
    save_bundle(args.out, profile=replace(start.profile, redcnn_channels=args.channels), normalization=norm,
                denoiser_state=model.eval().state_dict(), noise_model_states=noise_states,
                calibration=start.calibration, noise_histogram=start.manifest.get("noise_histogram"),
                training=training)
    print(json.dumps(training["widened"]))


if __name__ == "__main__":
    main()
