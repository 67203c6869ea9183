"""benchmarks/levers/: the 2.5D wrapper (common.py) and the widened prior (widen_prior.py) that lever experiments
of docs/LEVERS.md start from."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import torch

from SelfSupCTDenoiseLib.engine.networks.redcnn import RedCNN

ROOT = Path(__file__).resolve().parents[1]


def _common(name="common"):
    spec = importlib.util.spec_from_file_location(f"levers_{name}", ROOT / "benchmarks" / "levers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_untrained_2p5d_network_is_the_2d_one_and_its_neighbours_count_once_trained():
    common = _common()
    torch.manual_seed(0)
    net2d = RedCNN(channels=8, kernel_size=3)
    torch.nn.init.normal_(net2d.tconv5.weight, std=0.05)  # not the identity
    model = common.Denoiser2p5D(net2d)
    stack = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(stack), net2d(stack[:, 1:2]), atol=1e-6)
    with torch.no_grad():
        model.side.normal_(std=0.1)
    changed = stack.clone()
    changed[:, 0] += 1.0  # only a neighbour moves
    assert (model(changed) - model(stack)).abs().mean() > 1e-3
    twin = copy.deepcopy(model)  # the student/teacher copies must use their own neighbour weights
    with torch.no_grad():
        twin.side.zero_()
    assert torch.allclose(twin(stack), net2d(stack[:, 1:2]), atol=1e-6)
    assert not torch.allclose(model(stack), net2d(stack[:, 1:2]), atol=1e-4)


def test_neighbour_stacks_repeat_the_edge_slices():
    common = _common()
    volume = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    stacks = common.neighbour_stacks(volume, [0, 3], reach=2)
    assert stacks[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [1, 2, 3, 3, 3]]


def test_widened_network_computes_the_narrow_one_until_trained_then_uses_its_new_channels():
    widen = _common("widen_prior").widen
    torch.manual_seed(0)
    narrow = RedCNN(channels=8, kernel_size=3)
    torch.nn.init.normal_(narrow.tconv5.weight, std=0.05)  # not the identity
    wide = widen(narrow, 12)
    assert wide.conv2.weight.shape == (12, 12, 3, 3) and wide.tconv5.weight.shape == (12, 1, 3, 3)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(wide(x), narrow(x))
    optimizer = torch.optim.Adam(wide.parameters(), lr=1e-3)
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(wide(x), torch.zeros_like(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert wide.conv3.weight[:, 8:].abs().max() > 0  # the new channels are read now


def test_body_patches_lie_inside_each_slices_body_box():
    """runtime_knobs.py --body-patches: every crop of a real chest slice and of a real abdomen slice is
    inside its body box, where uniform draws put about half their pixels in air."""
    import numpy as np
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.engine.adapt import PatchSampler
    from SelfSupCTDenoiseLib.engine.body import body_box
    from SelfSupCTDenoiseLib.engine.normalization import Normalization

    sys.path.insert(0, str(ROOT / "benchmarks" / "levers"))
    try:
        knobs = _common("runtime_knobs")
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "levers"))
    hu = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(ROOT / "Testing" / "data" / "real_ct" / name)))[0]
                   for name in ("lidc_0314/000138.dcm", "cmb_crc/1-026.dcm")]).astype(np.float32)
    norm = Normalization()
    pool = torch.from_numpy(norm.to_model(hu))[:, None]
    air = {}
    for sampler_class in (PatchSampler, knobs.body_patch_sampler(PatchSampler, norm.to_hu)):
        sampler = sampler_class(pool, None, 64, "rot90flip", torch.Generator().manual_seed(0))
        corners = [sampler._corner(2, 512, 512, 64) for _ in range(200)]
        inside = [body_box(hu[i], margin=0) for i, _, _ in corners]
        in_box = [y0 <= y and y + 64 <= y1 and x0 <= x and x + 64 <= x1
                  for (_, y, x), (y0, y1, x0, x1) in zip(corners, inside)]
        air[sampler_class.__name__] = float((norm.to_hu(sampler.sample(200)[0].numpy()) < -900).mean())
        if sampler_class is not PatchSampler:
            assert all(in_box)
    assert air["BodyPatchSampler"] < 0.2 < 0.4 < air["PatchSampler"], air
