import pytest
import torch

from SelfSupCTDenoiseLib.engine.config import PROFILES
from SelfSupCTDenoiseLib.engine.networks.redcnn import RedCNN
from SelfSupCTDenoiseLib.engine.networks.unet import UNet


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_redcnn_has_the_reference_parameter_count():
    # 1->96 conv, 4x 96->96 conv, 4x 96->96 tconv, 96->1 tconv, all 5x5 with bias
    assert n_params(RedCNN(**PROFILES["paper"].denoiser_kwargs())) == 1_848_865


def test_lite_profile_is_much_cheaper_than_paper():
    assert n_params(RedCNN(**PROFILES["lite"].denoiser_kwargs())) < 0.15 * 1_848_865


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 1, 37, 53), (1, 1, 21, 21)])
def test_redcnn_keeps_size_and_starts_as_identity(shape):
    model = RedCNN(channels=8, kernel_size=5)
    x = torch.randn(shape)
    y = model(x)
    assert y.shape == x.shape
    assert torch.equal(y, x)  # zero-initialised last layer: untrained network is the identity


def test_redcnn_rejects_too_small_and_bad_arguments():
    with pytest.raises(ValueError, match="at least 21"):
        RedCNN(channels=4, kernel_size=5)(torch.zeros(1, 1, 20, 40))
    with pytest.raises(ValueError, match="kernel_size a positive odd number"):
        RedCNN(kernel_size=4)


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (3, 1, 45, 67), (1, 1, 9, 10)])
def test_unet_output_size_matches_input(shape):
    model = UNet(base_channels=4, depth=2)
    assert model(torch.randn(shape)).shape == shape


def test_unet_checkpoint_keys_are_named_and_stable():
    keys = set(UNet(base_channels=4, depth=2).state_dict())
    assert "down.0.0.weight" in keys and "up.1.2.weight" in keys and "head.weight" in keys
