"""DenseRAUnet (Ma and Zhang 2019, section 2.3): shapes, published channel counts and dilation rates,
module switches (with analytic parameter counts), scripting."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ctbundles.networks.blocks_dense_ra_unet import ChannelSpatialSELayer, DecoderModule, ResidualAtrousUnit
from ctbundles.networks.dense_ra_unet import DenseRAUnet

# a miniature configuration with the same topology, so forward passes run in well under a second on CPU
TINY = dict(init_features=8, growth_rate=4, block_config=(1, 2, 2, 1), bn_size=2, decoder_channels=(16, 12, 8),
            head_channels=(8, 4), edb_layers=2)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def rau_params(c: int, rates: int = 3) -> int:
    b = c // 4
    return rates * (9 * c * b + 2 * b) + (rates * b * c + 2 * c)  # dilated convs + BN, 1x1 fuse + BN


def scse_params(c: int) -> int:
    h = c // 2
    return (c * h + h) + (h * c + c) + (c + 1)  # cSE two FC layers, sSE 1x1 conv to one channel


@pytest.fixture(scope="module")
def default_net():
    torch.manual_seed(0)
    return DenseRAUnet().eval()


def test_published_densenet121_encoder(default_net):
    net = default_net
    assert net.in_channels == 9 and net.out_channels == 2
    assert net.block_config == (6, 12, 24, 16) and net.growth_rate == 32 and net.init_features == 64
    # DenseNet-121: 64 stem, 64+6*32=256, 128+12*32=512, 256+24*32=1024, 512+16*32=1024
    assert net.encoder_channels == (64, 256, 512, 1024, 1024)
    assert net.stem[0].in_channels == 9 and net.stem[0].out_channels == 64
    assert len(net.stage1[1]) == 6 and len(net.stage2[1]) == 12 and len(net.stage3[1]) == 24
    assert len(net.stage4[1]) == 16
    layer = net.stage3[1].denselayer1.layers
    assert layer.conv1.out_channels == 4 * 32 and layer.conv2.out_channels == 32


def test_default_rau_rates_and_channels(default_net):
    for lat, c in ((default_net.lateral1, 1024), (default_net.lateral2, 512), (default_net.lateral3, 256)):
        assert isinstance(lat, ResidualAtrousUnit)
        assert lat.dilations == (2, 4, 8)
        convs = [b.conv for b in lat.branches]
        assert [cv.dilation for cv in convs] == [(2, 2), (4, 4), (8, 8)]
        assert [cv.padding for cv in convs] == [(2, 2), (4, 4), (8, 8)]  # "same" size
        assert all(cv.in_channels == c and cv.out_channels == c // 4 for cv in convs)
        assert lat.fuse.conv.in_channels == 3 * (c // 4) and lat.fuse.conv.out_channels == c
    assert sum(isinstance(m, ChannelSpatialSELayer) for m in default_net.modules()) == 3
    assert sum(isinstance(m, DecoderModule) for m in default_net.modules()) == 3


def test_default_forward_shape(default_net):
    with torch.no_grad():
        y = default_net(torch.randn(1, 9, 32, 32))
    assert y.shape == (1, 2, 32, 32)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (50, 37), (1, 1), (33, 65)])
def test_output_is_centre_slice_grid(size):
    torch.manual_seed(0)
    net = DenseRAUnet(**TINY).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 9, *size))
    assert y.shape == (2, 2, *size)
    assert torch.isfinite(y).all()


def test_rau_is_residual_and_keeps_shape():
    torch.manual_seed(0)
    rau = ResidualAtrousUnit(2, 16).eval()
    x = torch.randn(1, 16, 20, 20)
    assert rau(x).shape == x.shape
    # zeroing the fuse BN makes the branch path vanish: output = ReLU(x), the residual path alone
    nn.init.zeros_(rau.fuse.adn.N.weight)
    nn.init.zeros_(rau.fuse.adn.N.bias)
    assert torch.allclose(rau(x), torch.relu(x))


def test_rau_receptive_field_reaches_rate_8():
    """Centre output depends on input pixels 8 away (rate 8 branch) but not 9 away."""
    rau = ResidualAtrousUnit(2, 4, branch_channels=1).eval()
    for p in rau.parameters():  # positive weights: no ReLU is dead, every tap shows in the gradient
        nn.init.constant_(p, 0.1)
    x = torch.zeros(1, 4, 41, 41, requires_grad=True)
    rau(x + 1.0)[0, :, 20, 20].sum().backward()
    g = x.grad[0].abs().sum(0)
    assert g[20, 28] > 0 and g[20, 12] > 0 and g[28, 28] > 0
    offsets = {(int(i) - 20, int(j) - 20) for i, j in (g > 0).nonzero()}
    taps = {(a * d, b * d) for d in (2, 4, 8) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert offsets == taps  # 3x3 taps at rates 2, 4, 8 plus the centre (residual path)


@pytest.mark.parametrize(
    "switch,module_attr,cls",
    [("use_rau", "lateral2", ResidualAtrousUnit), ("use_scse", "decoder2", DecoderModule), ("use_edb", "edb", None)],
)
def test_switches_remove_modules(switch, module_attr, cls):
    on = DenseRAUnet(**TINY)
    off = DenseRAUnet(**TINY, **{switch: False})
    if switch == "use_rau":
        assert isinstance(on.lateral1, ResidualAtrousUnit) and isinstance(off.lateral1, nn.Identity)
        assert not any(isinstance(m, ResidualAtrousUnit) for m in off.modules())
    if switch == "use_scse":
        assert isinstance(on.decoder1.scse, ChannelSpatialSELayer) and isinstance(off.decoder1.scse, nn.Identity)
        assert not any(isinstance(m, ChannelSpatialSELayer) for m in off.modules())
    if switch == "use_edb":
        assert isinstance(off.edb, nn.Identity) and not isinstance(on.edb, nn.Identity)
    assert n_params(on) > n_params(off)
    with torch.no_grad():
        assert off.eval()(torch.randn(1, 9, 32, 32)).shape == (1, 2, 32, 32)


def test_parameter_counts_of_switches():
    full = n_params(DenseRAUnet(**TINY))
    c0, c1, c2, c3, _ = DenseRAUnet(**TINY).encoder_channels
    assert (c0, c1, c2, c3) == (8, 12, 14, 15)
    assert full - n_params(DenseRAUnet(**TINY, use_rau=False)) == rau_params(c1) + rau_params(c2) + rau_params(c3)
    assert full - n_params(DenseRAUnet(**TINY, use_scse=False)) == sum(scse_params(c) for c in (16, 12, 8))
    # EDB: two MONAI dense layers (k=4, bottleneck 2k=8) on the 8-channel stem, plus the wider head conv input
    k, bott, c = 4, 8, 8
    edb = 0
    for _ in range(2):
        edb += 2 * c + c * bott + 2 * bott + bott * k * 9
        c += k
    head_extra = 2 * k * 8 * 9  # head_conv1 input grows by edb_layers * k channels, 8 outputs, 3x3
    assert full - n_params(DenseRAUnet(**TINY, use_edb=False)) == edb + head_extra


def test_all_switches_off_is_dense_unet_baseline():
    base = DenseRAUnet(**TINY, use_rau=False, use_edb=False, use_scse=False)
    names = {type(m).__name__ for m in base.modules()}
    assert not names & {"ResidualAtrousUnit", "ChannelSpatialSELayer", "SpatialSELayer", "ChannelSELayer"}
    assert isinstance(base.edb, nn.Identity)
    assert sum(type(m).__name__ == "_DenseBlock" for m in base.modules()) == 4  # the encoder's only


@pytest.mark.parametrize("switches", [{}, {"use_rau": False, "use_edb": False, "use_scse": False}])
def test_torchscript_matches_eager(switches):
    torch.manual_seed(0)
    net = DenseRAUnet(**TINY, **switches).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 9, 40, 24)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


def test_gaussian_init():
    torch.manual_seed(0)
    net = DenseRAUnet(**TINY)
    w = net.decoder1.conv1.conv.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(float(w.std()) - (2.0 / fan_out) ** 0.5) < 0.25 * (2.0 / fan_out) ** 0.5
    assert float(net.decoder1.conv1.adn.N.weight.mean()) == 1.0


def test_bad_configuration():
    with pytest.raises(ValueError, match="decoder modules"):
        DenseRAUnet(**{**TINY, "decoder_channels": (8, 8)})
