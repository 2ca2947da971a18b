"""Losses of the orCaScore cascade (Araújo et al., Sect. 4.1): hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ctbundles.losses.orcascore_cascade import OrcaScoreDiceLoss, OrcaScoreFocalLoss


@pytest.mark.parametrize("logit1,expected", [
    (0.0, 0.25 * math.log(2) / 2),  # p_t = 1/2: (1 - 1/2)^2 ln 2, averaged over the 2 channels
    (math.log(3), (0.25 ** 2) * math.log(4 / 3) / 2),  # p_t = 3/4
    (-math.log(3), (0.75 ** 2) * math.log(4) / 2),  # p_t = 1/4: hard example, larger weight
])
def test_focal_loss_gamma_2_softmax(logit1, expected):
    x = torch.tensor([0.0, logit1]).reshape(1, 2, 1, 1)
    y = torch.ones(1, 1, 1, 1)
    assert OrcaScoreFocalLoss()(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_gamma_0_is_half_cross_entropy():
    x = torch.tensor([0.3, -1.2, 2.0, 0.1]).reshape(1, 2, 2, 1)
    y = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1)
    ce = torch.nn.functional.cross_entropy(x, y[:, 0].long())
    assert OrcaScoreFocalLoss(gamma=0.0)(x, y).item() == pytest.approx(ce.item() / 2, rel=1e-5)


def test_dice_loss_half_overlap():
    # two pixels, labels (1, 0), uniform softmax 1/2: each class Dice = 2 * 0.5 / (1 + 1) = 0.5
    x = torch.zeros(1, 2, 2, 1)
    y = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1)
    assert OrcaScoreDiceLoss()(x, y).item() == pytest.approx(0.5, abs=1e-5)


def test_dice_loss_perfect_prediction_near_zero():
    y = torch.tensor([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 2, 2)
    x = torch.cat([50 * (1 - 2 * y), 50 * (2 * y - 1)], dim=1)
    assert OrcaScoreDiceLoss()(x, y).item() == pytest.approx(0.0, abs=1e-5)
