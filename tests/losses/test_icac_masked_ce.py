"""ICAC masked cross-entropy with deep supervision (Bortsova et al. 2017, Sec. 2.2), hand-computed."""

from __future__ import annotations

import math

import pytest
import torch

from ctbundles.losses.icac_masked_ce import ICACMaskedCELoss, crop_target

LN2, LN4 = math.log(2.0), math.log(4.0)


def _logits(z, channels):
    """Sigmoid logits z (X, Y) -> (1, C, X, Y, 1); two channels: softmax over (0, z) == sigmoid(z)."""
    z = torch.tensor(z, dtype=torch.float32)[None, None, ..., None]
    return z if channels == 1 else torch.cat([torch.zeros_like(z), z], dim=1)


LABEL = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])[None, None, ..., None]  # -1 = below 130 HU, ignored
Z = [[0.0, 0.0], [5.0, math.log(3.0)]]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("w", [1000.0, 1.0])
def test_single_output_hand_computed(channels, w):
    # supervised voxels: y=1 at z=0 -> w ln 2; y=0 at z=0 -> ln 2; y=0 at z=ln 3 -> ln 4; the 4th is ignored
    loss = ICACMaskedCELoss(pos_weight=w)
    expected = (w * LN2 + LN2 + LN4) / 3
    assert loss(_logits(Z, channels), LABEL).item() == pytest.approx(expected, rel=1e-6)
    loss_sum = ICACMaskedCELoss(pos_weight=w, reduction="sum")
    assert loss_sum(_logits(Z, channels), LABEL).item() == pytest.approx(3 * expected, rel=1e-6)


def test_ignored_voxel_gets_no_gradient():
    z = _logits(Z, 1).requires_grad_(True)
    ICACMaskedCELoss()(z, LABEL).backward()
    assert z.grad[0, 0, 1, 0, 0].item() == 0.0
    # d/dz of -w log s(z) at z=0 is -w/2, divided by 3 supervised voxels
    assert z.grad[0, 0, 0, 0, 0].item() == pytest.approx(-1000.0 / 2 / 3)


def test_all_voxels_supervised_when_no_ignore_label():
    label = torch.tensor([[1.0, 0.0], [0.0, 0.0]])[None, None, ..., None]
    # 4th voxel now y=0 at z=5: -log(1 - s(5)) = log(1 + e^5)
    expected = (2 * LN2 + LN4 + math.log1p(math.exp(5.0))) / 4  # w = 1 for y=1 at z=0 -> ln 2
    assert ICACMaskedCELoss(pos_weight=1.0)(_logits(Z, 1), label).item() == pytest.approx(expected, rel=1e-6)


def test_deep_supervision_sum():
    main = _logits(Z, 1)
    aux = torch.zeros_like(main)  # every aux voxel: ln 2 (x w for the positive)
    stacked = torch.stack([main, aux, aux], dim=1)  # (B, 1 + 2, C, ...)
    w, a = 1000.0, 0.25
    main_loss = (w * LN2 + LN2 + LN4) / 3
    aux_loss = (w * LN2 + 2 * LN2) / 3
    loss = ICACMaskedCELoss(pos_weight=w, aux_weight=a)
    assert loss(stacked, LABEL).item() == pytest.approx(main_loss + 2 * a * aux_loss, rel=1e-6)
    loss.aux_weight = 0.0
    assert loss(stacked, LABEL).item() == pytest.approx(main_loss, rel=1e-6)


def test_label_larger_than_prediction_is_cropped_at_offset():
    big = torch.full((1, 1, 5, 6, 3), -1.0)
    big[:, :, 1:3, 2:4, 1:2] = LABEL
    loss = ICACMaskedCELoss(label_offset=(1, 2, 1))
    assert loss(_logits(Z, 1), big).item() == pytest.approx((1000 * LN2 + LN2 + LN4) / 3, rel=1e-6)
    assert crop_target(big, (2, 2, 1), None).shape[2:] == (2, 2, 1)
    torch.testing.assert_close(crop_target(big, (3, 4, 1), None), big[:, :, 1:4, 1:5, 1:2])
    with pytest.raises(ValueError, match="cannot cover"):
        crop_target(big, (2, 2, 1), (4, 0, 0))


def test_empty_supervision_is_zero():
    label = torch.full((1, 1, 2, 2, 1), -1.0)
    assert ICACMaskedCELoss()(_logits(Z, 1), label).item() == 0.0


def test_bad_shapes_and_arguments():
    with pytest.raises(ValueError, match="reduction"):
        ICACMaskedCELoss(reduction="median")
    with pytest.raises(ValueError, match="does not match"):
        ICACMaskedCELoss()(torch.zeros(1, 1, 2, 2), LABEL)
