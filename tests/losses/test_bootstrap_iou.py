"""Weighted bootstrap + exponential IoU loss (DenseRAUnet section 2.4) on hand-computed tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ctbundles.losses.bootstrap_iou import BootstrapIoULoss, BootstrapLoss, ExponentialIoULoss

# four pixels, logits (background, calcium) chosen for round probabilities
#   a: calcium,    p = (0.25, 0.75)
#   b: background, p = (0.95, 0.05)  -> easy (p0 >= 0.9): dropped
#   c: background, p = (0.5, 0.5)    -> hard
#   d: background, p = (0.25, 0.75)  -> hard
LOGITS = torch.tensor([[0.0, math.log(19.0), 0.0, 0.0], [math.log(3.0), 0.0, 0.0, math.log(3.0)]]).view(1, 2, 1, 4)
TARGET = torch.tensor([1, 0, 0, 0]).view(1, 1, 1, 4)


@pytest.mark.parametrize("alpha,beta", [(5.0, 1.0), (1.0, 1.0), (2.0, 0.5)])
@pytest.mark.parametrize("normalize,n", [("selected", 3), ("all", 4)])
def test_bootstrap_hand_computed(alpha, beta, normalize, n):
    # selected pixels: a, c, d (3); all pixels: 4
    expected = -(alpha * math.log(0.75) + beta * (math.log(0.5) + math.log(0.25))) / n
    got = BootstrapLoss(threshold=0.9, alpha=alpha, beta=beta, normalize=normalize)(LOGITS, TARGET)
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("alpha,beta", [(5.0, 1.0), (2.0, 0.5)])
def test_bootstrap_balanced_hand_computed(alpha, beta):
    # positives averaged over the 1 positive, hard negatives over the 2 hard ones (c, d)
    expected = -(alpha * math.log(0.75) / 1 + beta * (math.log(0.5) + math.log(0.25)) / 2)
    got = BootstrapLoss(threshold=0.9, alpha=alpha, beta=beta, normalize="balanced")(LOGITS, TARGET)
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("normalize,pos_grad", [("selected", 5.0 * 0.88 / (4 * 16384)), ("balanced", 5.0 * 0.88 / 6)])
def test_bootstrap_plateau_gradient_on_positives(normalize, pos_grad):
    """The training plateau: every negative hovers just under t = 0.9 (p1 ~ 0.1) and the positives
    are at p1 = 0.12. "selected" divides the 6 positives' push by ~65 000 hovering negatives (the
    positives get a summed logit gradient of 4e-4 against 0.1 on the negatives, the network stays
    at p0 = t); "balanced" averages positives and hard negatives separately (4.4 against 0.1)."""
    h = 128
    y = torch.zeros(4, 1, h, h)
    y[0, 0, 60:62, 60:63] = 1  # 6 calcium pixels in the batch
    z = torch.zeros(4, 2, h, h)
    z[:, 1] = math.log(0.1 / 0.9) + 0.01  # p0 just below 0.9: all hard
    z[:, 1][y[:, 0] > 0] = math.log(0.12 / 0.88)
    z.requires_grad_()
    BootstrapLoss(threshold=0.9, alpha=5.0, beta=1.0, normalize=normalize)(z, y).backward()
    g = z.grad[:, 1]
    assert float(-g[y[:, 0] > 0].sum()) == pytest.approx(6 * pos_grad, rel=1e-3)
    assert float(g[y[:, 0] == 0].sum()) == pytest.approx(0.1, rel=2e-2)


def test_bootstrap_threshold_selects_hard_negatives():
    # t = 0.99 keeps pixel b (p0 = 0.95) as well; t = 0.4 drops c (0.5) and keeps only d (0.25)
    keep_all = -(math.log(0.75) + math.log(0.95) + math.log(0.5) + math.log(0.25)) / 4
    only_d = -(math.log(0.75) + math.log(0.25)) / 2  # a and d selected
    assert float(BootstrapLoss(0.99, 1.0, 1.0)(LOGITS, TARGET)) == pytest.approx(keep_all, rel=1e-5)
    assert float(BootstrapLoss(0.4, 1.0, 1.0)(LOGITS, TARGET)) == pytest.approx(only_d, rel=1e-5)


def test_bootstrap_all_easy_background_is_zero():
    easy = torch.tensor([10.0, -10.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    assert float(BootstrapLoss()(easy, torch.zeros(1, 1, 3, 3))) == 0.0


def test_bootstrap_with_one_threshold_is_weighted_cross_entropy():
    torch.manual_seed(0)
    x, y = torch.randn(2, 2, 5, 6), (torch.rand(2, 1, 5, 6) > 0.7).long()
    ce = torch.nn.functional.cross_entropy(x, y[:, 0])
    assert float(BootstrapLoss(1.0, 1.0, 1.0)(x, y)) == pytest.approx(float(ce), rel=1e-5)


def test_bootstrap_gradient_ignores_easy_negatives():
    x = LOGITS.clone().requires_grad_(True)
    BootstrapLoss(0.9, 5.0, 1.0)(x, TARGET).backward()
    assert torch.all(x.grad[0, :, 0, 1] == 0)  # the easy negative contributes nothing
    assert torch.all(x.grad[0, :, 0, 2] != 0)


def test_exponential_iou_hand_computed():
    # p1 = (0.75, 0.05, 0.5, 0.75), y = (1, 0, 0, 0): inter 0.75, union 2.05 + 1 - 0.75 = 2.3
    iou = (0.75 + 1.0) / (2.3 + 1.0)
    assert float(ExponentialIoULoss(smooth=1.0)(LOGITS, TARGET)) == pytest.approx(math.exp(1 - iou) - 1, rel=1e-5)
    iou0 = 0.75 / 2.3
    assert float(ExponentialIoULoss(smooth=0.0)(LOGITS, TARGET)) == pytest.approx(math.exp(1 - iou0) - 1, rel=1e-5)


def test_exponential_iou_limits():
    y = torch.tensor([1, 0, 1, 0]).view(1, 1, 1, 4)
    perfect = torch.tensor([[-30.0, 30.0, -30.0, 30.0], [30.0, -30.0, 30.0, -30.0]]).view(1, 2, 1, 4)
    assert float(ExponentialIoULoss(0.0)(perfect, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(ExponentialIoULoss(0.0)(-perfect, y)) == pytest.approx(math.e - 1, rel=1e-5)
    no_calcium = torch.tensor([30.0, -30.0]).view(1, 2, 1, 1).expand(1, 2, 1, 4)
    assert float(ExponentialIoULoss(1.0)(no_calcium, torch.zeros(1, 1, 1, 4))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("iou_weight", [0.0, 1.0, 0.5])
def test_combined(iou_weight):
    boot = -(5 * math.log(0.75) + math.log(0.5) + math.log(0.25)) / 3
    iou = math.exp(1 - 1.75 / 3.3) - 1
    got = BootstrapIoULoss(threshold=0.9, alpha=5.0, beta=1.0, iou_weight=iou_weight)(LOGITS, TARGET)
    assert float(got) == pytest.approx(boot + iou_weight * iou, rel=1e-5)


def test_defaults_and_bad_input():
    loss = BootstrapIoULoss()
    boot = loss.bootstrap
    assert (boot.threshold, boot.alpha, boot.beta, loss.iou_weight) == (0.9, 5.0, 1.0, 1.0)
    assert loss.bootstrap.normalize == "selected"
    with pytest.raises(ValueError, match="normalize"):
        BootstrapLoss(normalize="mean")
    with pytest.raises(ValueError, match="logits"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="does not match"):
        loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 3, 2))
