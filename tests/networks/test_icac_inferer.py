"""Patch-wise valid-convolution inference with overlap averaging (Bortsova et al. 2017, Sec. 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from ctbundles.networks.icac_fcn import ICACFCN
from ctbundles.networks.icac_inferer import ValidTilingInferer, tile_starts


class _MeanConv:
    """A valid 3x3x3 box filter: output voxel i <-> input voxel 1 + i, grid period 1."""

    border_lo = (1, 1, 1)
    size_multiple = (1, 1, 1)

    def output_size(self, size):
        return tuple(s - 2 for s in size)

    def __call__(self, x):
        return F.conv3d(x, torch.full((1, 1, 3, 3, 3), 1.0 / 27, dtype=x.dtype))


def test_tile_starts():
    assert tile_starts(100, 40, 20, 4) == [0, 20, 40, 60]
    assert tile_starts(101, 40, 20, 4) == [0, 20, 40, 60, 64]  # last origin: smallest multiple of 4 >= 61
    assert tile_starts(10, 40, 20, 4) == [0]
    assert tile_starts(100, 40, 30, 4) == [0, 28, 56, 60]
    with pytest.raises(ValueError):
        tile_starts(10, 2, 1, 4)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_box_filter_tiles_equal_whole_volume(overlap):
    torch.manual_seed(0)
    x = torch.rand(2, 1, 23, 17, 11, dtype=torch.float64)
    net = _MeanConv()
    tiled = ValidTilingInferer((8, 9, 7), geometry=net, overlap=overlap, sw_batch_size=3)(x, net)
    whole = net(F.pad(x, (1, 1, 1, 1, 1, 1)))
    assert tiled.shape == x.shape
    torch.testing.assert_close(tiled, whole)


def test_overlapping_outputs_are_averaged():
    geo = _MeanConv()
    calls = []

    def net(x):  # every call returns its call number: overlaps average the numbers
        calls.append(len(calls))
        return torch.full((x.shape[0], 1, *geo.output_size(x.shape[2:])), float(len(calls)))

    out = ValidTilingInferer((6, 5, 5), geometry=geo, overlap=0.5)(torch.zeros(1, 1, 6, 3, 3), net)
    # output tiles of 4 voxels along x, step 2: origins 0, 2 -> voxels 0-1 from tile 1, 2-3 from both, 4-5 tile 2
    assert len(calls) == 2
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.tensor([1.0, 1.0, 1.5, 1.5, 2.0, 2.0]))


def test_icac_fcn_tiled_equals_whole_volume_and_keeps_meta():
    torch.manual_seed(0)
    net = ICACFCN(features=(1, 2, 2)).eval()
    x = torch.randn(1, 1, 60, 56, 30)
    inferer = ValidTilingInferer((129, 129, 60), overlap=0.5)
    starts, pads, out = inferer.plan(x.shape[2:], net)
    assert out == (48, 48, 24)
    assert starts == [[0, 12], [0, 8], [0, 6]]  # overlapping tiles along every axis
    with torch.no_grad():
        tiled = inferer(MetaTensor(x, meta={"filename_or_obj": "case.nii.gz"}), net)
        padded = F.pad(x, [p for a in (2, 1, 0) for p in pads[a]])
        whole = net(padded)[:, :, : x.shape[2], : x.shape[3], : x.shape[4]]
    assert tuple(tiled.shape) == (1, 1, 60, 56, 30)
    assert isinstance(tiled, MetaTensor) and tiled.meta["filename_or_obj"] == "case.nii.gz"
    assert all(s % m == 0 for a, m in enumerate(net.size_multiple) for s in starts[a])
    assert pads[0][0] == 41 and pads[2][0] == 18
    torch.testing.assert_close(tiled.as_tensor(), whole, rtol=1e-5, atol=1e-5)
