"""Function-preserving widening of a trained ICAC FCN (a warm start for a wider network).

The ICAC FCN of Bortsova et al. (MICCAI 2017, Sec. 2, Fig. 1) is trained here at a reduced width on
a 2-core CPU (``bundles/icac_ct_segmentation/docs/README.md``, deviation 1). A wider network
(more feature maps per level, same layer plan and receptive field) can start from those weights
instead of from scratch, in the spirit of Net2WiderNet (Chen, Goodfellow and Shlens, "Net2Net:
Accelerating Learning via Knowledge Transfer", ICLR 2016), with zero instead of split outgoing
weights:

- every old channel keeps its weights, biases and batch-normalisation statistics;
- a new channel gets the wider network's default initialisation for its incoming weights;
- the weights from a new channel into an old channel (and into the classifier) are zero.

So each old channel, and therefore the output, is exactly what the narrow network computed (in
eval mode; in train mode up to dropout's random masks), while the new channels receive gradients
through their zero outgoing weights and start learning at the first step.

The two 1x1x1 convolutions after a skip concatenation (``fuse1``: upsampled level 2 then level-1
skip; ``fuse0``: upsampled level 1 then level-0 skip) see their old input channels in two runs,
which the channel map below accounts for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ctbundles.networks.icac_fcn import ICACFCN

__all__ = ["widen_icac_state_dict"]


def _input_channels(key: str, old: Sequence[int], new: Sequence[int], old_in: int) -> list[int]:
    """Indices, in the wider tensor, of the ``old_in`` old input channels of parameter ``key``."""
    if key.startswith("fuse1."):  # cat([up(level 2), skip level 1])
        return list(range(old[2])) + [new[2] + i for i in range(old[1])]
    if key.startswith("fuse0."):  # cat([up(level 1), skip level 0])
        return list(range(old[1])) + [new[1] + i for i in range(old[0])]
    return list(range(old_in))


def widen_icac_state_dict(
    state_dict: Mapping[str, torch.Tensor], old_features: Sequence[int], wide: ICACFCN
) -> dict[str, torch.Tensor]:
    """State dict for ``wide`` that computes what ``state_dict`` (width ``old_features``) computes.

    Args:
        state_dict: weights of an ``ICACFCN`` with ``features=old_features``.
        old_features: its feature maps at levels 0, 1, 2.
        wide: an ``ICACFCN`` with the same options and at least as many feature maps per level; its
            current (freshly initialised) parameters give the new channels' incoming weights.

    Returns:
        a state dict loadable into ``wide`` with ``strict=True``.

    Raises:
        ValueError: the widths or the parameter sets do not match.
    """
    old = [int(f) for f in old_features]
    new = [int(f) for f in wide.features]
    if len(old) != 3 or any(o > n for o, n in zip(old, new)):
        raise ValueError(f"widen_icac_state_dict: cannot widen features {old} to {new}")
    target = wide.state_dict()
    if set(target) != set(state_dict):
        missing = sorted(set(target) ^ set(state_dict))[:5]
        raise ValueError(f"widen_icac_state_dict: the two networks differ in their parameters (e.g. {missing}); "
                         "build the wide network with the same residual, dropout, deep_supervision and logit_norm")
    out: dict[str, torch.Tensor] = {}
    for key, t_new in target.items():
        t_old = state_dict[key].to(t_new.dtype) if t_new.is_floating_point() else state_dict[key]
        if t_old.shape == t_new.shape:
            out[key] = t_old.clone()
            continue
        if t_old.dim() != t_new.dim() or t_old.dim() == 0:
            raise ValueError(f"widen_icac_state_dict: {key} has shape {tuple(t_old.shape)}, cannot widen to {tuple(t_new.shape)}")
        w = t_new.clone()
        rows = list(range(t_old.shape[0]))
        if t_old.dim() == 1:  # bias, BN weight / bias / running statistics
            w[rows] = t_old
        else:  # convolution weight (out, in, *kernel)
            cols = _input_channels(key, old, new, t_old.shape[1])
            w[rows] = 0.0  # an old output channel reads nothing from a new input channel,
            w[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = t_old  # and its old weights from old ones
        out[key] = w
    return out
