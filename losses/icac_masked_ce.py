"""Training objective of the ICAC 3D FCN (Bortsova et al., MICCAI 2017, Sec. 2.2 and 3).

``L_total = L(main) + sum_i a_i L_i(auxiliary i)``, every ``L`` a cross-entropy over the voxels
that are supervised: with the paper's ">130 HU objective" only voxels at or above 130 HU; the
others carry ``ignore_value`` in the label (see ``ctbundles.transforms.icac_supervision``).
The positive (ICAC) voxels are weighted by ``pos_weight`` (1000 for the first 5 epochs, then 1)
and the auxiliary weights ``a_i`` decay from 1 to 0 over 50 epochs; both are plain attributes
that ``ctbundles.handlers.icac_schedules.ICACScheduleHandler`` sets at every epoch start.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ICACMaskedCELoss", "crop_target"]


def crop_target(target: torch.Tensor, size: Sequence[int], offset: Sequence[int] | None = None) -> torch.Tensor:
    """Crop the spatial axes of ``target`` (B, C, *T) to ``size``, starting at ``offset`` per axis.

    A valid-convolution network predicts a smaller region than its input; ``offset`` is the input
    voxel aligned with output voxel 0 (``ICACFCN.border_lo``). ``None``: centred (extra voxel after).
    """
    spatial = target.shape[2:]
    if len(size) != len(spatial):
        raise ValueError(f"prediction has {len(size)} spatial axes, the label {len(spatial)}")
    slices = [slice(None), slice(None)]
    for a, (t, s) in enumerate(zip(spatial, size)):
        lo = (t - s) // 2 if offset is None or t == s else int(offset[a])
        if lo < 0 or lo + s > t:
            raise ValueError(f"label of spatial size {tuple(spatial)} cannot cover a prediction of size {tuple(size)} at offset {offset}")
        slices.append(slice(lo, lo + s))
    return target[tuple(slices)]


class ICACMaskedCELoss(nn.Module):
    """Masked, class-weighted cross-entropy with deep supervision (Bortsova et al. 2017, Sec. 2.2).

    For one output with logits ``z`` and labels ``y`` (0 = background, 1 = ICAC, ``ignore_value`` =
    not supervised), over the supervised voxels ``S``:

    - one channel (the paper's sigmoid unit): ``l_v = -(w y_v log s(z_v) + (1 - y_v) log(1 - s(z_v)))``;
    - C >= 2 channels (softmax): ``l_v = -w_{y_v} log softmax(z_v)[y_v]`` with weight 1 for class 0
      and ``w`` for every foreground class;

    ``L = sum_S l_v / |S|`` (``reduction="mean"``; 0 when ``S`` is empty) or ``sum_S l_v``
    (``"sum"``, the paper's literal wording). With deep supervision the prediction is stacked
    (B, 1 + K, C, ...) as ``ICACFCN`` returns it in training mode and the loss is
    ``L(main) + aux_weight * sum_k L(aux_k)``.

    Args:
        pos_weight: weight ``w`` of ICAC voxels (paper: 1000 for the first 5 epochs, then 1).
        aux_weight: the auxiliary weight ``a_i`` (the same for the six classifiers; paper: 1 -> 0).
        ignore_value: label value of voxels excluded from supervision.
        label_offset: label voxel aligned with prediction voxel 0 per axis when the label is larger
            than the prediction (``ICACFCN.border_lo``); None = centred.
        reduction: "mean" or "sum" over the supervised voxels of a batch.
    """

    def __init__(
        self,
        pos_weight: float = 1000.0,
        aux_weight: float = 1.0,
        ignore_value: float = -1.0,
        label_offset: Sequence[int] | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.pos_weight = float(pos_weight)
        self.aux_weight = float(aux_weight)
        self.ignore_value = float(ignore_value)
        self.label_offset = None if label_offset is None else [int(v) for v in label_offset]
        self.reduction = reduction

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Masked weighted cross-entropy of one output (B, C, *S) against labels (B, 1, *S)."""
        labels = target[:, 0]
        supervised = labels != self.ignore_value
        y = torch.where(supervised, labels, torch.zeros_like(labels)).long()
        if logits.shape[1] == 1:
            z = logits[:, 0].float()
            yf = y.float()
            # -(w y log s(z) + (1 - y) log(1 - s(z))), written with logsigmoid for stability
            per_voxel = -(self.pos_weight * yf * F.logsigmoid(z) + (1.0 - yf) * F.logsigmoid(-z))
        else:
            weight = torch.full((logits.shape[1],), self.pos_weight, dtype=torch.float32, device=logits.device)
            weight[0] = 1.0
            per_voxel = F.cross_entropy(logits.float(), y, weight=weight, reduction="none")
        per_voxel = per_voxel * supervised
        total = per_voxel.sum()
        if self.reduction == "sum":
            return total
        return total / supervised.sum().clamp_min(1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == target.dim() + 1:  # stacked deep-supervision outputs (B, 1 + K, C, ...)
            outputs = torch.unbind(input, dim=1)
        elif input.dim() == target.dim():
            outputs = (input,)
        else:
            raise ValueError(f"prediction of shape {tuple(input.shape)} does not match a label of shape {tuple(target.shape)}")
        target = crop_target(target, outputs[0].shape[2:], self.label_offset)
        loss = self.single(outputs[0], target)
        for aux in outputs[1:]:
            loss = loss + self.aux_weight * self.single(aux, target)
        return loss
