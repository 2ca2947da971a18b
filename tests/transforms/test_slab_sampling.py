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


@pytest.mark.parametrize("as_torch", [False, True])
def test_centre_slice_threshold_uses_centre_channel(as_torch):
    from ctbundles.transforms.slab_sampling import CentreSliceThresholdd

    stack = np.zeros((9, 3, 3), np.float32)
    stack[4] = [[0.5, 0.2, 0.4], [0.0, 0.9, 0.1], [0.38, 0.37, 0.2]]
    stack[[0, 1, 2, 3, 5, 6, 7, 8]] = 1.0  # neighbours bright everywhere: must be ignored
    label = np.ones((1, 3, 3), np.float32)
    d = {"image": torch.as_tensor(stack) if as_torch else stack, "label": torch.as_tensor(label) if as_torch else label}
    out = CentreSliceThresholdd("label", threshold=0.377)(d)["label"]
    expected = [[1, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert np.asarray(out)[0].tolist() == expected
    assert np.asarray(d["label"]).sum() == 9  # input not modified


def _train_random_transforms(**overrides):
    """The bundle's training crop/resize pipeline, parsed from configs/train.json."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    root = Path(__file__).resolve().parents[2] / "bundles" / "cac_chest_cardiac_ct_segmentation"
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    for k, v in overrides.items():
        parser[k] = v
    from monai.transforms import Compose

    return Compose(parser.get_parsed_content("random_transforms"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_crop_resize_keeps_labels_on_calcium(seed):
    """Regression: after the random crop and resize of training, every calcium label pixel must lie
    on a centre-slice pixel >= 130 HU (scaled), and a lesion inside the crop must keep a label.
    With nearest label / bilinear image interpolation and no re-threshold, ~40 % of the resized
    labels of small synthetic lesions sat on soft tissue and the network could not learn them."""
    rng = np.random.default_rng(seed)
    thr = (130.0 + 1000.0) / 3000.0
    stack = np.full((9, 64, 64), (40.0 + 1000.0) / 3000.0, np.float32)  # soft tissue, 40 HU
    label = np.zeros((1, 64, 64), np.float32)
    for _ in range(6):  # 1-2 pixel lesions at 300-600 HU, like the synthetic chest cohort
        x, y = rng.integers(20, 44, size=2)
        w = int(rng.integers(1, 3))
        stack[4, x : x + w, y : y + 1] = (rng.uniform(300, 600) + 1000.0) / 3000.0
        label[0, x : x + w, y : y + 1] = 1.0
    t = _train_random_transforms(crop_min=40, crop_max=56, patch_size=[96, 96])
    t.set_random_state(seed)
    n_label = 0
    for _ in range(10):
        out = t({"image": torch.as_tensor(stack), "label": torch.as_tensor(label)})
        img, lab = np.asarray(out["image"]), np.asarray(out["label"])
        assert img.shape == (9, 96, 96) and lab.shape == (1, 96, 96)
        on = lab[0] > 0
        assert np.all(img[4][on] >= thr)
        n_label += int(on.sum())
    assert n_label > 0
