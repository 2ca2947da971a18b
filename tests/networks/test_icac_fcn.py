"""ICAC 3D FCN (Bortsova et al., MICCAI 2017, Sec. 2.1-2.3): receptive field, outputs, switches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctbundles.networks.blocks_icac_fcn import ICACBlock
from ctbundles.networks.icac_fcn import DEFAULT_DROPOUT, ICACFCN

SMALL = (2, 2, 2)  # channel widths that keep the tests fast on a CPU


def _deterministic(net: nn.Module) -> nn.Module:
    """Positive averaging convolutions: every activation is positive, so no ReLU hides a gradient."""
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            nn.init.zeros_(m.bias)
    return net.eval()


@pytest.mark.parametrize("residual", [True, False])
def test_receptive_field_is_85_85_37(residual):
    net = _deterministic(ICACFCN(features=(1, 1, 1), residual=residual))
    x = torch.ones(1, 1, 97, 97, 40, requires_grad=True)
    y = net(x)
    assert tuple(y.shape[2:]) == (16, 16, 4)
    for voxel in [(0, 0, 0), (15, 14, 3), (6, 9, 1)]:
        x.grad = None
        net(x)[(0, 0, *voxel)].backward()
        support = (x.grad[0, 0] != 0).nonzero()
        extent = (support.max(0).values - support.min(0).values + 1).tolist()
        assert extent == [85, 85, 37], voxel
        # the support is a full box: every voxel of it contributes
        assert support.shape[0] == 85 * 85 * 37
        # the centre lies within the documented wobble of the alignment border_lo + i (period 4)
        centre = (support.max(0).values + support.min(0).values) / 2
        for a in range(3):
            assert abs(float(centre[a]) - (net.border_lo[a] + voxel[a])) <= 2.0
    assert net.receptive_field == (85, 85, 37)


@pytest.mark.parametrize("size", [(97, 97, 40), (101, 105, 41), (178, 178, 98), (240, 240, 100)])
def test_output_size_and_border(size):
    net = ICACFCN(features=SMALL)
    out = net.output_size(size)
    lo, hi = net.border(size)
    assert lo == (41, 41, 18)
    assert all(lo[a] + out[a] + hi[a] == size[a] for a in range(3))
    if size == (178, 178, 98):  # the paper's training patch: 41 voxels per side in-plane, 18 along z
        assert out == (96, 96, 62) and hi == (41, 41, 18)
    if max(size) <= 105:
        with torch.no_grad():
            y = net.eval()(torch.zeros(1, 1, *size))
        assert tuple(y.shape) == (1, 1, *out)


def test_input_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        ICACFCN(features=SMALL).output_size((60, 97, 40))


def test_auxiliary_outputs_only_in_training():
    net = ICACFCN(out_channels=2, features=SMALL)
    x = torch.randn(1, 1, 97, 97, 40)
    net.train()
    y = net(x)
    assert tuple(y.shape) == (1, 7, 2, 16, 16, 4)  # main + 6 auxiliary classifiers, stacked on dim 1
    assert len(net.heads) == 6
    # the stacked main output equals the eval-mode output up to BN/dropout statistics: check it is not a copy
    assert not torch.equal(y[:, 0], y[:, 1])
    net.eval()
    with torch.no_grad():
        assert tuple(net(x).shape) == (1, 2, 16, 16, 4)
    plain = ICACFCN(features=SMALL, deep_supervision=False).train()
    assert len(plain.heads) == 0
    assert tuple(plain(x).shape) == (1, 1, 16, 16, 4)


def test_layer_count():
    assert ICACFCN(features=SMALL).num_layers() == 23  # the paper: "ours 24" layers
    assert ICACFCN(features=SMALL, deep_supervision=False).num_layers() == 23


@pytest.mark.parametrize("position", ["first_conv", "second_conv", "addition"])
def test_dropout_positions_and_probabilities(position):
    net = ICACFCN(features=SMALL, dropout_position=position)
    slot = {"first_conv": "drop1", "second_conv": "drop2", "addition": "drop3"}[position]
    for i, p in enumerate(DEFAULT_DROPOUT, start=1):
        block = getattr(net, f"block{i}")
        drops = [m for m in block.modules() if isinstance(m, nn.Dropout)]
        if p == 0:
            assert drops == []
        else:
            assert len(drops) == 1 and drops[0] is getattr(block, slot) and drops[0].p == pytest.approx(p)
    assert [getattr(net, f"block{i}").dropout_p for i in range(4, 9)] == [0.3, 0.3, 0.4, 0.4, 0.5]


def test_dropout_before_addition_keeps_the_skip():
    """Dropout before the addition corrupts the residual branch only: the shortcut passes intact."""
    torch.manual_seed(0)
    block = ICACBlock(2, residual=True, dropout=0.9999, dropout_position="addition").train()
    x = torch.randn(1, 2, 7, 7, 7)
    torch.testing.assert_close(block(x), x[:, :, 2:-2, 2:-2, 2:-2])


@pytest.mark.parametrize("residual", [True, False])
def test_plain_vs_residual(residual):
    block = ICACBlock(3, residual=residual).eval()
    for m in block.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    x = torch.randn(1, 3, 8, 9, 10)
    y = block(x)
    assert tuple(y.shape) == (1, 3, 4, 5, 6)
    expected = x[:, :, 2:-2, 2:-2, 2:-2] if residual else torch.zeros_like(y)
    torch.testing.assert_close(y, expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dropout_position"):
        ICACFCN(dropout_position="middle")
    with pytest.raises(ValueError, match="8 probabilities"):
        ICACFCN(dropout=(0.1,))


def test_torchscript_matches_eager():
    net = ICACFCN(features=SMALL)
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 97, 97, 40)
    net.eval()
    scripted.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    net.train()
    scripted.train()
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(1)
    b = scripted(x)
    assert a.shape == b.shape == (1, 7, 1, 16, 16, 4)


def test_auxiliary_outputs_are_aligned_with_the_main_output():
    """Each auxiliary output voxel sees an input region centred on the same input voxel as the main output."""
    net = ICACFCN(features=(1, 1, 1), dropout=(0.0,) * 8)
    _deterministic(net)
    net.train()  # training mode returns the stacked outputs; BN stays in eval mode (running stats)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.eval()
    x = torch.ones(1, 1, 97, 97, 40, requires_grad=True)
    extents = []
    for k in range(7):
        x.grad = None
        voxel = (8, 8, 1)
        net(x)[(0, k, 0, *voxel)].backward()
        support = (x.grad[0, 0] != 0).nonzero()
        lo, hi = support.min(0).values, support.max(0).values
        centre = (lo + hi) / 2
        offset = [float(centre[a]) - (net.border_lo[a] + voxel[a]) for a in range(3)]
        assert abs(offset[0]) <= 2 and abs(offset[1]) <= 2 and offset[2] == 0, (k, offset)
        extents.append((hi - lo + 1).tolist())
    # main output first (85 x 85 x 37), then the heads on blocks 2..7 with growing receptive fields
    assert extents[0] == [85, 85, 37]
    assert [e[2] for e in extents[1:]] == [13, 17, 21, 25, 29, 33]
