"""ICAC >130 HU supervision mask and final HU threshold (Bortsova et al. 2017, Sec. 2.2, 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctbundles.transforms.icac_supervision import HUThreshold, HUThresholdd, SupervisionMask, SupervisionMaskd

HU = np.array([[[-1000.0], [129.9]], [[130.0], [900.0]]], dtype=np.float32)[None]  # (1, 2, 2, 1)
LABEL = np.array([[[0.0], [1.0]], [[1.0], [0.0]]], dtype=np.float32)[None]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_supervision_mask(as_tensor):
    conv = torch.as_tensor if as_tensor else np.asarray
    out = SupervisionMask()(conv(LABEL), conv(HU))
    expected = np.array([[[-1.0], [-1.0]], [[1.0], [0.0]]], dtype=np.float32)[None]
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert isinstance(out, torch.Tensor) == as_tensor
    np.testing.assert_array_equal(np.asarray(SupervisionMask(enabled=False)(conv(LABEL), conv(HU))), LABEL)


def test_supervision_maskd_and_threshold_value():
    d = SupervisionMaskd("label", threshold_hu=1000.0, ignore_value=255)({"label": LABEL.copy(), "image": HU})
    assert (d["label"] == 255).all()
    with pytest.raises(ValueError, match="spatial shapes differ"):
        SupervisionMask()(LABEL, HU[:, :1])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_hu_threshold(as_tensor):
    conv = torch.as_tensor if as_tensor else np.asarray
    seg = conv(np.ones_like(LABEL))
    out = HUThreshold()(seg, conv(HU))
    np.testing.assert_array_equal(np.asarray(out).ravel(), [0, 0, 1, 1])
    d = HUThresholdd("pred", image_key="hu")({"pred": seg, "hu": conv(HU)})
    np.testing.assert_array_equal(np.asarray(d["pred"]).ravel(), [0, 0, 1, 1])


@pytest.mark.parametrize("midline, expected_right", [(None, 2), (0.0, 2), (-2.0, 3), (-100.0, 4)])
def test_split_sides_by_world_x(midline, expected_right):
    from monai.data import MetaTensor

    from ctbundles.transforms.icac_supervision import SplitSides, SplitSidesd

    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    affine[0, 3] = -3.0  # voxel i at world x = 2 i - 3: -3, -1, 1, 3 (centre 0)
    seg = MetaTensor(torch.ones(1, 4, 1, 1), affine=torch.as_tensor(affine))
    out = SplitSides(midline)(seg)
    values = out[0, :, 0, 0].tolist()
    assert sum(v == 2 for v in values) == expected_right  # +x is the patient's right (RAS)
    assert values[-1] == 2 and set(values) <= {1.0, 2.0}
    seg0 = MetaTensor(torch.zeros(1, 4, 1, 1), affine=torch.as_tensor(affine))
    assert SplitSidesd("pred")({"pred": seg0})["pred"].sum() == 0


@pytest.mark.parametrize("as_tensor", [False, True])
def test_sampling_classes_hand_computed(as_tensor):
    from ctbundles.transforms.icac_supervision import SamplingClasses, SamplingClassesd

    lab = -np.ones((1, 9, 1, 1), dtype=np.float32)  # 1D along x: ignored by default
    lab[0, 4] = 1.0  # ICAC at x = 4
    lab[0, [2, 3, 6, 7, 8], 0, 0] = 0.0  # supervised non-ICAC (bone) at x = 2, 3, 6, 7, 8
    conv = torch.as_tensor if as_tensor else np.asarray
    out = SamplingClasses(margin=(2, 0, 0))(conv(lab))
    # margin 2: x = 2..6 are near; 2, 3, 6 are bone near ICAC (2), 7, 8 other bone (3), the rest ignored (0)
    np.testing.assert_array_equal(np.asarray(out).ravel(), [0, 0, 2, 2, 1, 0, 2, 3, 3])
    assert isinstance(out, torch.Tensor) == as_tensor
    d = SamplingClassesd("label", margin=(0, 0, 0))({"label": conv(lab)})
    np.testing.assert_array_equal(np.asarray(d["label_classes"]).ravel(), [0, 0, 3, 3, 1, 0, 3, 3, 3])
    assert np.asarray(SamplingClasses()(conv(-np.ones((1, 3, 3, 3), np.float32)))).sum() == 0
    with pytest.raises(ValueError, match="margin"):
        SamplingClasses(margin=(-1, 0, 0))
