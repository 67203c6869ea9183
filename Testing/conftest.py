"""Shared fixtures: a tiny model bundle pre-trained (for real, in seconds) on synthetic pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SelfSupCTDenoise"))  # works with and without `pip install -e .`

#: Noise (HU) of the synthetic training pairs; tests at other levels are "unseen doses".
TRAIN_SIGMA = 30.0


def synthetic_subjects(n: int = 3, slices: int = 6, size: int = 64, sigma: float = TRAIN_SIGMA):
    from SelfSupCTDenoiseLib.data.phantom import noisy_pair
    from SelfSupCTDenoiseLib.engine.train import Subject

    subjects = []
    for i in range(n):
        ldct, ndct = noisy_pair(slices, size, sigma, seed=i)
        subjects.append(Subject(f"synthetic{i}", ldct, ndct))
    return subjects


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A 'tiny'-profile bundle made by the real pre-training code (~5 s on 2 cores)."""
    from SelfSupCTDenoiseLib.engine.train import PretrainConfig, pretrain

    # lr 1e-3: the tiny 3x3 network trains in 300 steps at this rate (the lite one needs 1e-4)
    config = PretrainConfig(profile="tiny", denoiser_steps=300, noise_model_steps=150, batch_size=8,
                            patch_size=32, calibration_patches=128, lr=1e-3)
    return pretrain(synthetic_subjects(), tmp_path_factory.mktemp("bundle") / "tiny", config)


@pytest.fixture
def ct_image():
    """A small synthetic CT volume as a SimpleITK image with non-trivial geometry."""
    import SimpleITK as sitk

    from SelfSupCTDenoiseLib.data.phantom import noisy_pair

    ldct, _ = noisy_pair(5, 48, 30.0, seed=7)
    image = sitk.GetImageFromArray(np.round(ldct).astype(np.int16))
    image.SetOrigin((-12.5, 30.25, 101.0))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # rotated in-plane: catches axis mix-ups
    return image
