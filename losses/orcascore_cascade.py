"""Training objectives of the orCaScore cascade (Araújo et al., Sect. 4.1).

Stage 1 (heart ROI): Dice loss (ref. [11] of the paper, Sudre et al. 2017), chosen over focal and
cross-entropy losses. Stages 2 (calcification) and 3 (false-positive removal): focal loss
(Lin et al. 2017, ref. [10]) for the strong class imbalance. Both are MONAI losses with the settings
for 2-class (or per-artery multi-class) softmax outputs and integer label maps.
"""

from __future__ import annotations

from monai.losses import DiceLoss, FocalLoss

__all__ = ["OrcaScoreDiceLoss", "OrcaScoreFocalLoss"]


class OrcaScoreDiceLoss(DiceLoss):
    """Soft Dice loss of the heart-ROI stage (Araújo et al., Sect. 4.1; MONAI :class:`DiceLoss`).

    Softmax over the output channels, the integer label converted to one-hot, background included,
    Dice averaged over channels and batch.

    Args:
        include_background: include channel 0 in the Dice (True).
        smooth_nr: numerator smoothing (1e-5, MONAI default).
        smooth_dr: denominator smoothing (1e-5, MONAI default).
        batch: compute the Dice over the whole batch instead of per image (False).
    """

    def __init__(self, include_background: bool = True, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )


class OrcaScoreFocalLoss(FocalLoss):
    """Focal loss of the calcification and false-positive stages (Araújo et al., Sect. 4.1; Lin et al. 2017).

    ``-(1 - p_t)^gamma log p_t`` with softmax probabilities over the output channels and the integer
    label converted to one-hot; mean over channels and voxels. The paper gives no gamma or alpha, so
    Lin et al.'s gamma = 2 is used without class weighting.

    Args:
        gamma: focusing parameter (2.0).
        alpha: weight of the foreground classes, or None (no weighting).
        include_background: include channel 0 (True).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, include_background: bool = True) -> None:
        super().__init__(include_background=include_background, to_onehot_y=True, gamma=gamma, alpha=alpha, use_softmax=True)
