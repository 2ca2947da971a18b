"""The training objective of MS-DCNN (Liu et al., ISLES 2018, section 2.4, eq. 4)."""

from __future__ import annotations

from monai.losses import DiceLoss

__all__ = ["PseudoDiceLoss"]


class PseudoDiceLoss(DiceLoss):
    """The paper's "pseudo DC loss" (eq. 4): ``1 - 1/C sum_c 2 sum_n p q / (sum_n q + sum_n p)``, a soft
    Dice on the predicted probabilities, averaged over the C classes (C = 1 for the lesion).

    This is MONAI's :class:`~monai.losses.DiceLoss` with the paper's choices as defaults: the
    foreground channel counts (``include_background=True``, it is the only channel), and the sums run
    over every pixel of the mini-batch (``batch=True``; eq. 4 sums over "the pixel number" N). The
    MS-DCNN network ends with the sigmoid, so by default the loss takes probabilities
    (``sigmoid=False``); pass ``sigmoid=True`` for a network built with ``sigmoid=False`` (logits):
    both give the same value. ``smooth_nr`` / ``smooth_dr`` (1e-5) keep an empty batch finite.

    Args:
        sigmoid: apply a sigmoid to the input first (for logits).
        batch: sum over the whole mini-batch before the ratio (True) or per image (False).
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        kwargs: other ``DiceLoss`` arguments.
    """

    def __init__(
        self, sigmoid: bool = False, batch: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, **kwargs
    ) -> None:
        kwargs.setdefault("include_background", True)
        super().__init__(sigmoid=sigmoid, batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr, **kwargs)
