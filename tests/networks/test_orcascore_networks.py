"""Stage 1-3 networks of the orCaScore cascade (Araújo et al., Sects. 3.2.1-3.2.3)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
from monai.networks.nets.resnet import ResNet

from ctbundles.networks.orcascore_encoder_unet import PAPER_ENCODERS, OrcaScoreEncoderUNet, ZeroPadShortcut
from ctbundles.networks.orcascore_heart_unet import OrcaScoreHeartUNet


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- stage 1: heart ROI U-Net

def test_heart_unet_filters_double_from_64_to_1024():
    net = OrcaScoreHeartUNet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    enc_out = [net.conv_0.conv_1.conv.out_channels] + [
        getattr(net, f"down_{i}").convs.conv_1.conv.out_channels for i in range(1, 5)
    ]
    assert enc_out == [64, 128, 256, 512, 1024]
    # every encoder/decoder convolution is 3x3 except the 1x1 output layer
    assert {m.kernel_size for m in convs} == {(3, 3), (1, 1)}
    assert [m.kernel_size for m in convs].count((1, 1)) == 1
    # 2x2 max-pooling between encoder levels, 2x2 stride-2 transposed convolutions up
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [u.in_channels for u in ups] == [1024, 512, 256, 128]
    assert all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    # batch normalization after every 3x3 convolution, ReLU activations
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == len(convs) - 1 == 18
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 18


def test_heart_unet_parameter_count_matches_classic_unet_with_bn():
    # classic U-Net (Ronneberger 2015) with padding: ~31.0 M parameters; + BN and a full-width last up-sampling
    assert 30.5e6 < n_params(OrcaScoreHeartUNet()) < 31.5e6


@pytest.mark.parametrize("out_channels,size,features", [
    (2, (64, 64), (64, 128, 256, 512, 1024, 64)),
    (1, (96, 80), (8, 16, 32, 64, 128, 8)),
    (2, (48, 112), (8, 16, 32, 64, 128, 8)),
])
def test_heart_unet_output_same_size_as_input(out_channels, size, features):
    net = OrcaScoreHeartUNet(out_channels=out_channels, features=features).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, out_channels, *size)


def test_heart_unet_scripts_and_matches_eager():
    net = OrcaScoreHeartUNet(features=(8, 16, 32, 64, 128, 8)).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(scripted(x), net(x))


def test_heart_unet_rejects_wrong_feature_list():
    with pytest.raises(ValueError, match="6 filter counts"):
        OrcaScoreHeartUNet(features=(64, 128, 256, 512, 1024))


# ---------------------------------------------------------------- stages 2 and 3: encoder U-Net

def test_encoder_unet_defaults_are_the_calcium_stage():
    net = OrcaScoreEncoderUNet()
    assert net.backbone == "efficientnet-b0"
    assert net.segmentation_head[0].out_channels == 2
    # EfficientNet-B0 stem: 3x3 stride-2 convolution with 32 filters (MONAI / Tan & Le 2019)
    assert net.encoder._conv_stem.kernel_size == (3, 3) and net.encoder._conv_stem.out_channels == 32
    ups = [m for m in net.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 5 and all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)


# parameter counts: EfficientNet-B0 ~4.0 M / B3 ~10.7 M / B5 ~28.3 M encoders, ResNet-34 ~21.3 M,
# ResNet-50 ~23.5 M, ResNet-101 ~42.5 M, plus the deconvolution decoder
EXPECTED_MPARAMS = {
    "efficientnet-b0": (6.5, 8.0),
    "efficientnet-b3": (13.5, 15.5),
    "efficientnet-b5": (32.0, 34.5),
    "resnet34": (23.0, 25.5),
    "resnet50": (37.0, 40.0),
    "resnet101": (56.0, 59.0),
}


@pytest.mark.parametrize("backbone", PAPER_ENCODERS)
def test_encoder_unet_parameter_counts(backbone):
    lo, hi = EXPECTED_MPARAMS[backbone]
    assert lo * 1e6 < n_params(OrcaScoreEncoderUNet(backbone=backbone, out_channels=4)) < hi * 1e6


SLOW_TO_SCRIPT = {"efficientnet-b3", "efficientnet-b5", "resnet50", "resnet101"}  # same code paths as b0 / resnet34


@pytest.mark.parametrize(
    "backbone",
    [pytest.param(b, marks=pytest.mark.slow) if b in SLOW_TO_SCRIPT else b for b in PAPER_ENCODERS],
)
def test_encoder_unet_every_paper_encoder_scripts_with_same_output(backbone):
    net = OrcaScoreEncoderUNet(backbone=backbone, out_channels=4).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 96, 96)  # the false-positive stage's crop size
    with torch.no_grad():
        y = net(x)
        torch.testing.assert_close(scripted(x), y)
    assert y.shape == (1, 4, 96, 96)


def test_encoder_unet_non_multiple_of_32_input_keeps_size():
    net = OrcaScoreEncoderUNet().eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 100, 72)).shape == (1, 2, 100, 72)


def test_encoder_unet_unknown_backbone_rejected():
    with pytest.raises(ValueError, match="invalid model_name"):
        OrcaScoreEncoderUNet(backbone="vgg16")


@pytest.mark.parametrize("stride,planes", [(2, 8), (1, 6)])
def test_zero_pad_shortcut_equals_monai_option_a(stride, planes):
    """Same numbers as MONAI's functools.partial shortcut, but scriptable."""
    x = torch.randn(2, 4, 9, 10)
    monai_shortcut = functools.partial(ResNet._downsample_basic_block, None, planes=planes, stride=stride, spatial_dims=2)
    module = ZeroPadShortcut(planes=planes, stride=stride)
    torch.testing.assert_close(module(x), monai_shortcut(x))
    torch.testing.assert_close(torch.jit.script(module)(x), monai_shortcut(x))


def test_resnet34_shortcuts_replaced():
    net = OrcaScoreEncoderUNet(backbone="resnet34")
    shortcuts = [m for m in net.modules() if isinstance(m, ZeroPadShortcut)]
    assert [(s.planes, s.stride) for s in shortcuts] == [(128, 2), (256, 2), (512, 2)]


@pytest.mark.parametrize("backbone, own", [("efficientnet-b0", 0.01), ("resnet18", 0.1)])
def test_encoder_bn_momentum_default_keeps_backbone_and_override_sets_all_encoder_layers(backbone, own):
    def momenta(net):
        return {m.momentum for m in net.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    assert momenta(OrcaScoreEncoderUNet(out_channels=4, backbone=backbone)) == {own}
    net = OrcaScoreEncoderUNet(out_channels=4, backbone=backbone, encoder_bn_momentum=0.3, decoder_channels=(32, 16, 16, 8, 8))
    assert momenta(net) == {0.3}
    # the decoder keeps its own (0.1) and the narrow decoder is used
    assert {m.momentum for m in net.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    assert net.segmentation_head[0].in_channels == 8


def test_load_matching_weights_copies_all_but_the_head(tmp_path):
    """Stage 3 from stage 2 (synthetic recipe): same encoder/decoder, 2-class instead of 4-class head."""
    from ctbundles.networks.orcascore_encoder_unet import load_matching_weights

    torch.manual_seed(0)
    stage2 = OrcaScoreEncoderUNet(out_channels=4, decoder_channels=(32, 16, 16, 8, 8))
    torch.save(stage2.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)
    stage3 = OrcaScoreEncoderUNet(out_channels=2, decoder_channels=(32, 16, 16, 8, 8))
    head_before = stage3.state_dict()["segmentation_head.0.weight"].clone()
    n = load_matching_weights(stage3, str(tmp_path / "model.pt"))
    s2, s3 = stage2.state_dict(), stage3.state_dict()
    differing = [k for k in s2 if s2[k].shape != s3[k].shape]
    assert differing == ["segmentation_head.0.weight", "segmentation_head.0.bias"]
    assert n == len(s2) - 2
    assert all(torch.equal(s2[k], s3[k]) for k in s2 if k not in differing)
    assert torch.equal(s3["segmentation_head.0.weight"], head_before)
    assert load_matching_weights(stage3, None) == 0
