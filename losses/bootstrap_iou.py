"""The DenseRAUnet training objective: weighted bootstrap loss + exponential IoU loss (Ma and Zhang,
"Automatic Calcium Scoring in Cardiac and Chest CT Using DenseRAUnet", section 2.4).

The paper's printed values of the threshold ``t`` and the coefficients ``alpha`` (positives) and
``beta`` (negatives) were lost in the available text ("experimentally set as , and ."), and so was
the exact exponential IoU formula. The choices below are this project's, documented here and in
the bundle README, and exposed as config values (``loss_threshold``, ``loss_alpha``,
``loss_beta``, ``loss_iou_weight`` in train.json):

* ``threshold = 0.9``: a background pixel whose predicted background probability is already
  >= 0.9 (cross entropy <= 0.105) is "easy" and dropped; all harder negatives stay.
* ``alpha = 5.0``, ``beta = 1.0``: calcium covers ~1e-3 of a cropped chest CT slice. Once the
  background is learned, the hard negatives left by the 0.9 threshold number a few times the
  positives, so a 5:1 weight lets positives dominate the bootstrap term; fixed inverse-frequency
  weights (~1000:1) would drive the network to over-segment.
* exponential IoU loss ``exp(1 - IoU_soft) - 1`` in [0, e - 1]: the same magnitude as the
  cross-entropy term (the paper's stated reason for the exponential form), zero for a perfect
  segmentation, with smoothing 1 so a slice with neither calcium nor predicted calcium costs 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["BootstrapLoss", "ExponentialIoULoss", "BootstrapIoULoss"]


def _probs_and_target(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax log-probabilities (B, 2, ...) and a binary target shaped (B, ...)."""
    if input.ndim < 3 or input.shape[1] != 2:
        raise ValueError(f"input must be logits shaped (B, 2, spatial...), got {tuple(input.shape)}")
    if target.ndim == input.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target must have one channel, got {tuple(target.shape)}")
        target = target[:, 0]
    if target.shape != input.shape[:1] + input.shape[2:]:
        raise ValueError(f"target {tuple(target.shape)} does not match input {tuple(input.shape)}")
    return F.log_softmax(input.float(), dim=1), (target > 0).float()


class BootstrapLoss(_Loss):
    """Weighted bootstrap loss (paper section 2.4)::

        L_boot = -1/N * sum_i [ alpha * y_i * log p_i1 + beta * (1 - y_i) * 1(p_i0 < t) * log p_i0 ]

    over the pixels of the mini-batch: every positive pixel, and only the negatives that are still
    hard (predicted background probability below ``threshold``). The selection is not
    differentiated. The paper calls N "the pixels to predict"; by default (``normalize="selected"``)
    N counts the pixels that enter the sum (positives and hard negatives), as in bootstrapped
    cross entropy (Wu et al. 2016), so that once the easy background is dropped the positives weigh
    more; ``normalize="all"`` divides by every pixel of the mini-batch; ``normalize="balanced"``
    averages the positives and the hard negatives separately (``alpha * mean_pos + beta *
    mean_hard_neg``), so that alpha : beta is the balance of the two classes whatever their counts.

    Why "balanced" exists: with "selected", training stalls on a plateau where every negative hovers
    just below ``threshold`` (p1 ~ 1 - t everywhere): all of them are selected, and a few calcium
    pixels among ~6e4 selected ones get a summed logit gradient ~1e-4 of that on the negatives
    (measured in tests/losses/test_bootstrap_iou.py); the IoU term is then saturated at e - 1
    (sum of p1 ~ 1e3 per crop) and its gradient is ~1e-3. "balanced" keeps the positives' push at
    alpha * (1 - p1) on that plateau.

    Args:
        threshold: t, background probability above which a negative pixel is dropped (0.9).
        alpha: weight of the positive (calcium) pixels (5.0).
        beta: weight of the retained negative pixels (1.0).
        normalize: "selected" (default), "all" or "balanced", the N of the formula.
    """

    def __init__(
        self, threshold: float = 0.9, alpha: float = 5.0, beta: float = 1.0, normalize: str = "selected"
    ) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if normalize not in ("selected", "all", "balanced"):
            raise ValueError(f"normalize must be 'selected', 'all' or 'balanced', got {normalize!r}")
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.normalize = normalize

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input: logits (B, 2, H, W[, D]); target: binary label (B, 1, ...) or (B, ...)."""
        logp, y = _probs_and_target(input, target)
        hard_neg = (logp[:, 0].detach().exp() < self.threshold).float() * (1.0 - y)
        per_pixel = self.alpha * y * logp[:, 1] + self.beta * hard_neg * logp[:, 0]
        if self.normalize == "all":
            return -per_pixel.mean()
        if self.normalize == "balanced":
            pos = (self.alpha * y * logp[:, 1]).sum() / y.sum().clamp_min(1.0)
            neg = (self.beta * hard_neg * logp[:, 0]).sum() / hard_neg.sum().clamp_min(1.0)
            return -(pos + neg)
        n_selected = (y + hard_neg).sum().clamp_min(1.0)
        return -per_pixel.sum() / n_selected


class ExponentialIoULoss(_Loss):
    """Exponential soft-IoU loss (paper section 2.4)::

        IoU = (sum_i p_i y_i + s) / (sum_i (p_i + y_i - p_i y_i) + s),   L_IoU = exp(1 - IoU) - 1

    with p_i the predicted calcium probability, over all pixels of the mini-batch.

    Args:
        smooth: s, added to numerator and denominator (1.0).
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = float(smooth)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp, y = _probs_and_target(input, target)
        p = logp[:, 1].exp()
        inter = (p * y).sum()
        union = (p + y - p * y).sum()
        iou = (inter + self.smooth) / (union + self.smooth)
        return torch.exp(1.0 - iou) - 1.0


class BootstrapIoULoss(_Loss):
    """DenseRAUnet loss ``L = L_boot + iou_weight * L_IoU`` (paper section 2.4, Table 1 "Bootstrap" +
    "IoU"); ``iou_weight = 0`` gives the bootstrap-only ablation.

    Args:
        threshold: bootstrap threshold t on the background probability (0.9).
        alpha: positive-pixel coefficient (5.0).
        beta: negative-pixel coefficient (1.0).
        iou_weight: weight of the exponential IoU term (1.0).
        smooth: IoU smoothing (1.0).
        normalize: N of the bootstrap term, "selected" pixels (default), "all" or "balanced".
    """

    def __init__(
        self, threshold: float = 0.9, alpha: float = 5.0, beta: float = 1.0, iou_weight: float = 1.0,
        smooth: float = 1.0, normalize: str = "selected",
    ) -> None:
        super().__init__()
        self.bootstrap = BootstrapLoss(threshold=threshold, alpha=alpha, beta=beta, normalize=normalize)
        self.iou = ExponentialIoULoss(smooth=smooth)
        self.iou_weight = float(iou_weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.bootstrap(input, target)
        if self.iou_weight != 0.0:
            loss = loss + self.iou_weight * self.iou(input, target)
        return loss
