"""9-slice stacks with the centre slice's label (DenseRAUnet section 2.2), replicate edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctbundles.transforms.slab_sampling import ExtractSlab, ExtractSlabd, extract_slab, slab_indices


@pytest.mark.parametrize(
    "centre,n,expected",
    [(0, 10, [0, 0, 0, 0, 0, 1, 2, 3, 4]), (5, 10, [1, 2, 3, 4, 5, 6, 7, 8, 9]), (9, 10, [5, 6, 7, 8, 9, 9, 9, 9, 9]),
     (0, 1, [0] * 9), (1, 3, [0, 0, 0, 0, 1, 2, 2, 2, 2])],
)
def test_slab_indices(centre, n, expected):
    assert slab_indices(centre, n) == expected


def test_slab_indices_errors():
    with pytest.raises(ValueError, match="odd"):
        slab_indices(0, 5, 4)
    with pytest.raises(IndexError, match="outside"):
        slab_indices(5, 5)


@pytest.mark.parametrize("as_torch", [False, True])
def test_extract_slab_channel_order(as_torch):
    vol = np.zeros((2, 3, 4, 12), np.float32)
    vol += np.arange(12)[None, None, None]  # value = slice index
    vol[1] += 100  # second channel offset
    v = torch.as_tensor(vol) if as_torch else vol
    out = extract_slab(v, 2)
    assert tuple(out.shape) == (18, 3, 4)
    got = np.asarray(out)[:, 0, 0].tolist()
    assert got == [0, 0, 0, 1, 2, 3, 4, 5, 6] + [100, 100, 100, 101, 102, 103, 104, 105, 106]


def test_extract_slabd_label_is_centre_slice():
    img = torch.arange(5, dtype=torch.float32).view(1, 1, 1, 5).expand(1, 2, 2, 5)
    lab = torch.zeros(1, 2, 2, 5)
    lab[..., 3] = 1
    d = ExtractSlabd("image", label_keys="label")({"image": img, "label": lab, "slice_index": 3})
    assert d["image"].shape == (9, 2, 2) and d["label"].shape == (1, 2, 2)
    assert d["label"].sum() == 4
    assert d["image"][:, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 4, 4, 4]
    assert ExtractSlab(3)(img, 0)[:, 0, 0].tolist() == [0, 0, 1]


@pytest.mark.parametrize("n", [1, 2, 5, 9, 12])
@pytest.mark.parametrize("as_torch", [False, True])
def test_extract_slab_equals_index_gather(n, as_torch):
    rng = np.random.default_rng(n)
    vol = rng.normal(size=(2, 3, 4, n)).astype(np.float32)
    for centre in range(n):
        idx = slab_indices(centre, n)
        expected = np.moveaxis(vol[..., idx], -1, 1).reshape(18, 3, 4)
        got = extract_slab(torch.as_tensor(vol) if as_torch else vol, centre)
        assert np.array_equal(np.asarray(got), expected)
