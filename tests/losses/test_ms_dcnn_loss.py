"""The pseudo Dice loss of MS-DCNN (eq. 4) on hand-computed tiny tensors."""

from __future__ import annotations

import pytest
import torch

from ctbundles.losses.ms_dcnn import PseudoDiceLoss


def test_hand_computed_batch_sum():
    # image 1: q = [0.5, 1, 0, 0], p = [1, 1, 0, 0]; image 2: q = [0.25, 0, 0, 0], p = [1, 0, 0, 0]
    q = torch.tensor([[0.5, 1.0, 0.0, 0.0], [0.25, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    # batch sums: sum pq = 0.5 + 1 + 0.25 = 1.75; sum q = 1.75; sum p = 3 -> 1 - 3.5 / 4.75
    expected = 1 - 3.5 / 4.75
    assert float(PseudoDiceLoss(smooth_nr=0, smooth_dr=0)(q, p)) == pytest.approx(expected, abs=1e-6)
    # per image: 1 - 3/3.5 and 1 - 0.5/1.25, averaged
    per_image = ((1 - 3 / 3.5) + (1 - 0.5 / 1.25)) / 2
    assert float(PseudoDiceLoss(batch=False, smooth_nr=0, smooth_dr=0)(q, p)) == pytest.approx(per_image, abs=1e-6)


def test_logits_and_probabilities_agree():
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 8, 8)
    target = (torch.rand(4, 1, 8, 8) > 0.7).float()
    a = PseudoDiceLoss()(torch.sigmoid(logits), target)
    b = PseudoDiceLoss(sigmoid=True)(logits, target)
    assert float(a) == pytest.approx(float(b), abs=1e-6)


@pytest.mark.parametrize("value, target, expected", [(1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
def test_limits(value, target, expected):
    q = torch.full((2, 1, 4, 4), value)
    p = torch.full((2, 1, 4, 4), target)
    assert float(PseudoDiceLoss()(q, p)) == pytest.approx(expected, abs=1e-4)


def test_gradient_flows():
    q = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    p = torch.zeros(1, 1, 4, 4)
    p[..., :2, :] = 1
    PseudoDiceLoss()(q, p).backward()
    # raising a foreground probability lowers the loss, raising a background one raises it
    assert float(q.grad[0, 0, 0, 0]) < 0 < float(q.grad[0, 0, 3, 3])
