"""SlabInferer: batched whole-volume 2.5D inference equals slice-by-slice inference; edge slices are
replicated; in-plane resizing returns the input grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai.data import MetaTensor

from ctbundles.networks.dense_ra_unet import DenseRAUnet
from ctbundles.networks.slab_inferer import SlabInferer
from ctbundles.transforms.slab_sampling import extract_slab


class ChannelIndexNet(nn.Module):
    """Returns, per pixel, the 9 input channels as weights 1..9 summed: reveals which slices came in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1, 1)
        s = (x * w).sum(1, keepdim=True)
        return torch.cat([-s, s], dim=1)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
def test_batched_equals_per_slice(batch_size):
    torch.manual_seed(0)
    net = DenseRAUnet(init_features=8, growth_rate=4, block_config=(1, 1, 1, 1), bn_size=2,
                      decoder_channels=(8, 8, 8), head_channels=(8, 4), edb_layers=1).eval()
    vol = torch.randn(1, 1, 32, 32, 7)
    with torch.no_grad():
        got = SlabInferer(batch_size=batch_size)(vol, net)
        per_slice = torch.stack([net(extract_slab(vol[0], z)[None])[0] for z in range(7)], dim=-1)
    assert got.shape == (1, 2, 32, 32, 7)
    assert torch.allclose(got[0], per_slice, atol=1e-5)


def test_each_volume_of_a_batch_gets_its_own_output():
    # slice z of volume i holds 10 * i + z: every output voxel reveals which volume and stack it came from
    vol = (torch.arange(5, dtype=torch.float32).view(1, 1, 1, 1, 5) + torch.tensor([0.0, 10.0]).view(2, 1, 1, 1, 1)).expand(2, 1, 2, 3, 5).clone()
    out = SlabInferer(batch_size=3)(vol, ChannelIndexNet())
    w = torch.arange(1, 10, dtype=torch.float32)
    assert out.shape == (2, 2, 2, 3, 5)
    for i in range(2):
        for z in range(5):
            stack = torch.tensor([min(max(z + k, 0), 4) for k in range(-4, 5)], dtype=torch.float32) + 10 * i
            assert float(out[i, 1, 1, 2, z]) == float((w * stack).sum())
            assert float(out[i, 0, 0, 0, z]) == -float((w * stack).sum())


def test_forward_passes_are_batched():
    calls = []

    def net(x):
        calls.append(x.shape[0])
        return ChannelIndexNet()(x)

    SlabInferer(batch_size=4)(torch.zeros(1, 1, 3, 3, 10), net)
    assert calls == [4, 4, 2]


def test_edge_slices_replicated():
    # slice k holds the value k: the stack of slice 0 is (0,0,0,0,0,1,2,3,4), of slice 5 (1..5,5,5,5,5)
    vol = torch.arange(6, dtype=torch.float32).view(1, 1, 1, 1, 6).expand(1, 1, 2, 2, 6).clone()
    out = SlabInferer(batch_size=3)(vol, ChannelIndexNet())
    w = torch.arange(1, 10, dtype=torch.float32)
    expected = {0: [0, 0, 0, 0, 0, 1, 2, 3, 4], 5: [1, 2, 3, 4, 5, 5, 5, 5, 5], 3: [0, 0, 1, 2, 3, 4, 5, 5, 5]}
    for z, stack in expected.items():
        assert float(out[0, 1, 0, 0, z]) == float((w * torch.tensor(stack, dtype=torch.float32)).sum())


def test_in_plane_resize_returns_input_grid_and_keeps_meta():
    vol = MetaTensor(torch.ones(1, 1, 12, 20, 3), meta={"filename_or_obj": "case.nii.gz"})
    seen = []

    def net(x):
        seen.append(tuple(x.shape[-2:]))
        return ChannelIndexNet()(x)

    out = SlabInferer(in_plane_size=(16, 16))(vol, net)
    assert seen == [(16, 16)]
    assert out.shape == (1, 2, 12, 20, 3)
    assert torch.allclose(out[:, 1], torch.full((1, 12, 20, 3), 45.0))  # constant image: 1+...+9
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.nii.gz"


def test_bad_input():
    with pytest.raises(ValueError, match="odd"):
        SlabInferer(slab_size=8)
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\)"):
        SlabInferer()(torch.zeros(1, 4, 4, 4), ChannelIndexNet())
